"""One registry of named loss terms, shared by the decoder-free encoder and every SAE.

A model's forward pass returns a typed output (``lightning_modules/outputs.py``: ``x``, ``z``, ``a``, and
``x_hat`` when it has a decoder). A term declares the output type it reads and takes only the options it
names, and returns either one value per example (averaged over the batch when reported) or one value for
the whole batch (batch statistics of the code, such as the variance and decorrelation terms, where a
per-example reduction has no meaning). Terms and ``total`` are reported on
this per-example scale, in training and evaluation alike; ``objective`` is what is optimised, where the
composite's ``reduction`` decides whether per-example terms are summed over the batch (the paper) or
averaged.

Under data parallelism, N ranks with batch B train as one process with batch N*B: batch statistics are
computed on the global batch's code (``global_batch`` gathers it with gradients), and a per-rank ``sum`` is
scaled by N, since DDP averages the ranks' gradients.
"""
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from lightning_modules.outputs import (Code, GatedOutput, JumpReLUOutput, MatryoshkaOutput, Reconstruction,
                                       TopKOutput)
from lightning_modules.sparse import SparseCode


@dataclass(frozen=True)
class LossTerm:
    fn: Callable[..., Tensor]
    reads: type  # the model output it needs (lightning_modules/outputs.py)
    per_example: bool
    sparsity: bool  # scaled by the sparsity warm-up of the training schedule
    sparse_codes: bool  # reads a sparse step's SparseCode a (and z, gate) as such; other terms get a dense a
    options: tuple[str, ...]  # the loss options it takes, by the names of its keyword arguments

    def __call__(self, out: Code, options: dict) -> Tensor:
        """The term on ``out``, given the options it takes out of all the loss's ``options``."""
        return self.fn(out, **{name: options[name] for name in self.options})


LOSS_TERMS: dict[str, LossTerm] = {}


def register(name: str, reads: type = Code, per_example: bool = True, sparsity: bool = False,
             sparse_codes: bool = False):
    """A loss term: ``fn(out, **its options) -> Tensor``, one value per example or, with ``per_example=False``,
    one for the batch (it then sees the global batch's code under data parallelism). In a sparse training step
    (lightning_modules/sparse.py) a term registered with ``sparse_codes`` reads ``out.a`` as a SparseCode;
    the others read it made dense."""
    def decorator(fn):
        options = tuple(inspect.signature(fn).parameters)[1:]
        LOSS_TERMS[name] = LossTerm(fn, reads, per_example, sparsity, sparse_codes, options)
        return fn

    return decorator


def lse_and_responsibilities(a: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example ``-log sum_j exp(-a_j)`` and the responsibilities ``softmax(-a)``, its gradient."""
    return -torch.logsumexp(-a, dim=-1), torch.softmax(-a, dim=-1)


def batch_correlation(a: Tensor, eps: float) -> Tensor:
    centred = a - a.mean(dim=0)
    cov = centred.T @ centred / max(a.shape[0] - 1, 1)
    std = torch.sqrt(torch.diagonal(cov) + eps)
    return cov / (std[:, None] * std[None, :])


@register("lse")
def lse(out: Code) -> Tensor:
    return lse_and_responsibilities(out.a)[0]


@register("variance", per_example=False)
def variance(out: Code, eps: float, bounded_variance: bool) -> Tensor:
    var = out.a.var(dim=0)
    if bounded_variance:  # minimised at Var = 1 instead of rewarding unbounded growth
        return (var - torch.log(var + eps)).sum()
    return -torch.log(var + eps).sum()


@register("decorrelation", per_example=False)
def decorrelation(out: Code, eps: float) -> Tensor:
    corr = batch_correlation(out.a, eps)
    off_diagonal = corr - torch.diag_embed(torch.diagonal(corr))
    return (off_diagonal**2).sum()


class CompositeLoss:
    """A weighted sum of registered terms. Every term is computed and reported, weight 0 included,
    so that runs of an ablation can be compared on the terms they did not optimise."""

    def __init__(
        self,
        weights: dict[str, float],
        reduction: str = "sum",
        eps: float = 1e-6,
        bounded_variance: bool = False,
        tanh_scale: float = 4.0,
    ):
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"unknown loss term(s) {unknown}; registered: {sorted(LOSS_TERMS)}")
        negative = {name: w for name, w in weights.items() if w < 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")
        if not any(w > 0 for w in weights.values()):
            raise ValueError(f"at least one loss weight must be > 0, got {dict(weights)}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"loss.reduction must be 'sum' or 'mean', got {reduction!r}")
        if eps <= 0:
            raise ValueError(f"loss.eps must be > 0, got {eps}")
        self.weights = {name: float(w) for name, w in weights.items()}
        self.reduction = reduction
        if tanh_scale <= 0:
            raise ValueError(f"loss.tanh_scale must be > 0, got {tanh_scale}")
        self.options = dict(eps=eps, bounded_variance=bounded_variance, tanh_scale=tanh_scale)

    def check_outputs(self, output_type: type, model_name: str) -> None:
        """Refuses a term that reads more than the model's output type holds."""
        for name in self.weights:
            reads = LOSS_TERMS[name].reads
            if not issubclass(output_type, reads):
                missing = sorted({f.name for f in dataclasses.fields(reads)} - {f.name for f in dataclasses.fields(output_type)})
                raise ValueError(f"loss term '{name}' needs {missing} (a {reads.__name__}), which {model_name} does "
                                 f"not produce (its forward returns a {output_type.__name__})")

    def __call__(self, out: Code, sparsity_scale: float = 1.0,
                 global_batch: Callable[[Tensor], Tensor] | None = None, ranks: int = 1) -> dict[str, Tensor]:
        """Every term and ``total`` per example, and the ``objective`` to minimise."""
        values, total, objective, dense, gathered = {}, 0.0, 0.0, out, None
        for name, weight in self.weights.items():
            term, seen = LOSS_TERMS[name], out
            if isinstance(out.a, SparseCode) and not term.sparse_codes:
                if dense is out:  # made dense once, for the terms that need every latent
                    dense = dataclasses.replace(out, a=out.a.dense())
                seen = dense
            if global_batch is not None and not term.per_example:
                if gathered is None:  # gathered once
                    gathered = dataclasses.replace(seen, a=global_batch(seen.a))
                seen = gathered
            with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
                value = term(seen, self.options)
                # summed over the global batch: this rank's rows, times the ranks that DDP averages over
                summed_over = len(value) * ranks if term.per_example and self.reduction == "sum" else 1
                value = value.mean() if term.per_example else value
            values[name] = value
            if weight > 0:
                weighted = weight * (sparsity_scale if term.sparsity else 1.0) * value
                total = total + weighted
                objective = objective + weighted * summed_over
        values["total"], values["objective"] = total, objective
        return values


# Terms of the standard SAE family: they need a decoder (x_hat) and are reduced per example.
@register("mse", reads=Reconstruction, sparse_codes=True)
def mse(out: Reconstruction) -> Tensor:
    return ((out.x - out.x_hat) ** 2).sum(dim=-1)


def magnitudes(out: Code) -> Tensor:
    """|a| (a SparseCode's at its entries), or a itself where the model says its code cannot be negative
    (``nonnegative_codes``): at LM width the abs and its backward's sign are two element-wise passes over a
    batch x latents tensor."""
    a = out.a.values if isinstance(out.a, SparseCode) else out.a
    return a if getattr(out, "nonnegative_codes", False) else a.abs()


def per_latent(out: Code, values: Tensor) -> Tensor:
    """One value per latent, lined up with ``magnitudes(out)``."""
    return values[out.a.columns] if isinstance(out.a, SparseCode) else values


def row_sums(out: Code, entries: Tensor) -> Tensor:
    """Per example, the sum over the code's entries of ``entries`` (lined up with ``magnitudes(out)``)."""
    return out.a.row_sums(entries) if isinstance(out.a, SparseCode) else entries.sum(dim=-1)


@register("l1", sparsity=True, sparse_codes=True)
def l1(out: Code) -> Tensor:
    return row_sums(out, magnitudes(out))


@register("l1_decnorm", reads=Reconstruction, sparsity=True, sparse_codes=True)
def l1_decnorm(out: Reconstruction) -> Tensor:
    """sum_i |a_i| ||W_dec,i||: an L1 penalty that shrinking the codes while growing the decoder cannot evade
    (dense: a matrix-vector product, no batch x latents product to write)."""
    if isinstance(out.a, SparseCode):
        return row_sums(out, magnitudes(out) * per_latent(out, out.decoder_norms))
    return magnitudes(out) @ out.decoder_norms


@register("l0", reads=JumpReLUOutput, sparsity=True, sparse_codes=True)
def l0(out: JumpReLUOutput) -> Tensor:
    """The count of open gates; differentiable only through the gate's straight-through surrogate."""
    return out.gate.row_sums(out.gate.values) if isinstance(out.gate, SparseCode) else out.gate.sum(dim=-1)


@register("l0_tanh", reads=Reconstruction, sparsity=True, sparse_codes=True)
def l0_tanh(out: Reconstruction, tanh_scale: float) -> Tensor:
    """A smooth L0: sum_i tanh(c a_i ||W_dec,i||), c = ``tanh_scale`` (larger c, closer to the count). Its
    gradient reaches every active latent's magnitude, not only the ones near their threshold."""
    return row_sums(out, torch.tanh(tanh_scale * magnitudes(out) * per_latent(out, out.decoder_norms)))


@register("auxk", reads=TopKOutput, sparse_codes=True)
def auxk(out: TopKOutput) -> Tensor:
    """Dead latents reconstruct the residual the live ones left (zero while no latent is dead)."""
    if out.aux_x_hat is None:
        return torch.zeros(len(out.x), device=out.x.device)
    residual = (out.x - out.x_hat).detach()
    return ((residual - out.aux_x_hat) ** 2).sum(dim=-1)


@register("matryoshka", reads=MatryoshkaOutput, sparse_codes=True)
def matryoshka(out: MatryoshkaOutput) -> Tensor:
    """The squared error of every nested prefix's reconstruction, summed over prefixes."""
    return sum(((out.x - x_hat) ** 2).sum(dim=-1) for x_hat in out.prefix_x_hats)


@register("gate_l1", reads=GatedOutput, sparsity=True)
def gate_l1(out: GatedOutput) -> Tensor:
    """The Gated SAE's sparsity penalty: relu(pi_gate), weighted by the decoder norms like l1_decnorm."""
    return (out.gate_activity * out.decoder_norms).sum(dim=-1)


@register("gate_aux", reads=GatedOutput)
def gate_aux(out: GatedOutput) -> Tensor:
    """The gate path's own reconstruction through the frozen decoder: trains the gate, not the decoder."""
    return ((out.x - out.gate_x_hat) ** 2).sum(dim=-1)
