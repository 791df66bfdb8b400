"""The sparse training step: a batch's code held as its active entries only, and the two autograd functions
whose backward touches only those entries.

At LM width an SAE's code has 1-2% of its latents active (TopK: k of thousands). The one piece of dense work
such a step cannot avoid is the encoder's forward matmul (every pre-activation is computed to pick the active
ones). Everything else scales with the active count:

    selected_linear  the pre-activations at the active entries, differentiable: the encoder's weight gradient
                     is a sparse [latents x batch] @ [batch x input] product, the bias gradient an index_add
    sparse_decode    x_hat = code @ W_dec as a CSR matmul; the gradient to the code's values is the sampled
                     product (grad x_hat) W_dec^T at the entries, the decoder's a sparse^T @ dense product

A ``SparseCode`` is what the loss terms read as ``out.a`` in such a step (lightning_modules/losses.py).
"""
import warnings
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

# torch warns once that its CSR tensors are a beta feature; the tests hold these products to the dense ones
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass
class SparseCode:
    """A [batch x latents] code in CSR form: row r's active latents are ``columns[crow[r]:crow[r + 1]]``,
    with ``values`` (differentiable) at the same positions."""
    crow: Tensor
    columns: Tensor
    values: Tensor
    latents: int

    @classmethod
    def from_rows(cls, indices: Tensor, values: Tensor, latents: int) -> "SparseCode":
        """The same number of entries in every row: ``indices`` and ``values`` are [batch x k]."""
        batch, k = indices.shape
        crow = torch.arange(0, batch * k + 1, k, device=indices.device)
        return cls(crow, indices.reshape(-1), values.reshape(-1), latents)

    @classmethod
    def from_flat(cls, flat: Tensor, values: Tensor, shape: tuple[int, int]) -> "SparseCode":
        """Entries at sorted flat positions ``flat`` of a [batch x latents] matrix."""
        batch, latents = shape
        counts = torch.bincount(flat // latents, minlength=batch)
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        return cls(crow, flat % latents, values, latents)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.crow) - 1, self.latents

    @cached_property
    def rows(self) -> Tensor:
        """The row of each entry."""
        return torch.repeat_interleave(torch.arange(self.shape[0], device=self.crow.device), self.active_counts())

    def active_counts(self) -> Tensor:
        return self.crow.diff()

    def matrix(self, values: Tensor | None = None) -> Tensor:
        """The torch sparse CSR matrix with ``values`` (default: the code's, detached) at the entries."""
        values = self.values.detach() if values is None else values
        return torch.sparse_csr_tensor(self.crow, self.columns, values, self.shape, check_invariants=False)

    @cached_property
    def by_latent(self) -> tuple[Tensor, Tensor, Tensor]:
        """The entries ordered by latent: the order, the [latents + 1] row pointers and each entry's example."""
        order = self.columns.argsort(stable=True)
        counts = torch.bincount(self.columns, minlength=self.latents)
        return order, torch.cat([counts.new_zeros(1), counts.cumsum(0)]), self.rows[order]

    def transposed(self, values: Tensor) -> Tensor:
        """The [latents x batch] CSR matrix with ``values`` at the entries (the transpose of ``matrix``)."""
        order, crow, examples = self.by_latent
        return torch.sparse_csr_tensor(crow, examples, values[order], (self.latents, self.shape[0]),
                                       check_invariants=False)

    def row_sums(self, entries: Tensor) -> Tensor:
        """Per row, the sum of ``entries`` (one per active entry): differentiable."""
        return torch.zeros(self.shape[0], dtype=entries.dtype, device=entries.device).index_add(0, self.rows, entries)

    def fired(self) -> Tensor:
        """Which latents have a positive value in some row."""
        fired = torch.zeros(self.latents, dtype=torch.bool, device=self.columns.device)
        return fired.index_fill(0, self.columns[self.values.detach() > 0], True)

    def with_values(self, values: Tensor) -> "SparseCode":
        return SparseCode(self.crow, self.columns, values, self.latents)

    def dense(self) -> Tensor:
        """The [batch x latents] code, differentiable: for what needs every latent (outside the hot path)."""
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.values.device)
        return out.index_put((self.rows, self.columns), self.values)


class SelectedLinear(torch.autograd.Function):
    """(x W^T + b) at the code's entries, given those values (``selected``, computed densely without autograd):
    the backward scatters the entries' gradients instead of a dense [batch x latents] one."""

    @staticmethod
    def forward(ctx, x, weight, bias, code: SparseCode, selected):
        ctx.save_for_backward(x, weight)
        ctx.code = code
        return selected

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        code = ctx.code
        gradients = code.matrix(grad)
        grad_x = gradients @ weight if ctx.needs_input_grad[0] else None
        grad_weight = code.transposed(grad) @ x if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros(code.latents, dtype=grad.dtype, device=grad.device).index_add_(0, code.columns, grad) \
            if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None


def selected_linear(x: Tensor, weight: Tensor, bias: Tensor, code: SparseCode, selected: Tensor) -> Tensor:
    """``selected`` (the pre-activations x W^T + b at ``code``'s entries), differentiable in x, weight, bias."""
    return SelectedLinear.apply(x, weight, bias, code, selected)


class SparseDecode(torch.autograd.Function):
    """code @ rows, ``rows`` [latents x input] one direction per latent."""

    @staticmethod
    def forward(ctx, values, rows, code: SparseCode):
        ctx.save_for_backward(values, rows)
        ctx.code = code
        with torch.autocast(rows.device.type, enabled=False):  # torch's CSR products have no bfloat16 kernels
            return code.matrix(values) @ rows

    @staticmethod
    def backward(ctx, grad):
        values, rows = ctx.saved_tensors
        code, grad = ctx.code, grad.contiguous()
        grad_values = torch.sparse.sampled_addmm(code.matrix(values), grad, rows.T, beta=0.0).values() \
            if ctx.needs_input_grad[0] else None
        grad_rows = code.transposed(values) @ grad if ctx.needs_input_grad[1] else None
        return grad_values, grad_rows, None


def sparse_decode(code: SparseCode, rows: Tensor) -> Tensor:
    """sum over each row's entries of value * rows[latent]: [batch x input], differentiable in the values and
    in ``rows``."""
    return SparseDecode.apply(code.values.to(rows.dtype), rows, code)  # bfloat16 values under autocast


def top_k(z: Tensor, k: int, members: int = 8) -> tuple[Tensor, Tensor]:
    """torch.topk(z, k, dim=-1, sorted=False), 1.4x faster at LM width: each row's latents fall into groups of
    ``members`` (latent g, g + w, g + 2w, ... for w = latents / members), and the k largest lie in the k groups
    with the largest maxima (any other group's members are each below k distinct larger values), so one cheap
    max over the groups leaves k * members candidates for the topk."""
    batch, latents = z.shape
    width = latents // members
    if latents % members or k > width:
        return z.topk(k, dim=-1, sorted=False)
    groups = z.view(batch, members, width).amax(1).topk(k, dim=-1, sorted=False).indices
    candidates = (groups[:, None, :] + width * torch.arange(members, device=z.device)[:, None]).view(batch, -1)
    values, picked = z.gather(1, candidates).topk(k, dim=-1, sorted=False)
    return values, candidates.gather(1, picked)
