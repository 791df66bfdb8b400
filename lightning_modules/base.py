"""What every model shares: its loss from the registry, per-term logging, the finiteness guard and the
post-step constraints, on Lightning's own training loop. Subclasses define ``encode`` (pre-activations
and code), ``forward`` (the typed output the loss terms read, lightning_modules/outputs.py, named in its
return annotation) and ``feature_directions`` (one row per latent, for the cosine figure)."""
import math
import typing

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_modules.losses import CompositeLoss
from lightning_modules.outputs import Code
from lightning_modules.sparse import SparseCode


class NonFiniteLossError(RuntimeError):
    pass


class SparseCoder(pl.LightningModule):
    def __init__(self, loss: CompositeLoss, lr: float, sparsity_warmup: float = 0.0, lr_decay: float = 0.0,
                 gradient_clip_val: float | None = None):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if gradient_clip_val is not None and gradient_clip_val <= 0:
            raise ValueError(f"model.gradient_clip_val must be > 0 (or null: no clipping), got {gradient_clip_val}")
        if not (0 <= sparsity_warmup <= 1 and 0 <= lr_decay <= 1):
            raise ValueError(f"model.sparsity_warmup and lr_decay are fractions of training in [0, 1], "
                             f"got {sparsity_warmup}, {lr_decay}")
        loss.check_outputs(self.output_type(), type(self).__name__)
        self.loss = loss
        self.lr, self.sparsity_warmup, self.lr_decay = lr, sparsity_warmup, lr_decay
        self.gradient_clip_val = gradient_clip_val
        # inputs are multiplied by this inside the model, so that every public method takes raw data and
        # a checkpoint carries its scaling (LM activations: sqrt(d) / E||x||); losses see scaled data
        self.register_buffer("input_scale", torch.ones(()))

    def setup(self, stage: str) -> None:
        scale = getattr(self.trainer.datamodule, "input_scale", None)
        if scale is not None:
            self.input_scale.fill_(scale)

    @classmethod
    def output_type(cls) -> type:
        """What ``forward`` returns, as its annotation says."""
        return typing.get_type_hints(cls.forward)["return"]

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Pre-activations and code of raw inputs x."""
        raise NotImplementedError

    def feature_directions(self) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def codes(self, x: Tensor, chunk_size: int = 4096) -> Tensor:
        """The code of every row of x, in chunks on the model's device."""
        return torch.cat([self.encode(chunk.to(self.device, self.dtype))[1] for chunk in x.split(chunk_size)])

    def normalize_weights(self) -> None:
        """Constraints re-imposed after every optimiser step (unit-norm rows or columns)."""

    def sparsity_scale(self) -> float:
        """Sparsity terms ramp linearly from 0 over the first ``sparsity_warmup`` of the steps."""
        if not self.sparsity_warmup:
            return 1.0
        return min(1.0, self.global_step / (self.sparsity_warmup * self.trainer.estimated_stepping_batches))

    def global_batch(self, values: Tensor) -> Tensor:
        """Every rank's rows of ``values``, in rank order, differentiable with respect to this rank's."""
        return self.all_gather(values, sync_grads=True).flatten(0, 1)

    def losses(self, out: Code, **options) -> dict[str, Tensor]:
        ranks = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return self.loss(out, global_batch=self.global_batch if ranks > 1 else None, ranks=ranks, **options)

    def training_step(self, batch, batch_idx):
        out = self(batch[0])
        terms = self.losses(out, sparsity_scale=self.sparsity_scale())
        self.check_finite(terms)
        every = self.trainer.log_every_n_steps  # the steps at which Lightning sends logged values to the loggers
        if every and (self.global_step + 1) % every == 0:
            shown = {"train/total": terms["total"], "train/l0": self.step_l0(out, terms)}
            self.log_dict(shown, prog_bar=True, sync_dist=True)
            self.log_dict(self.step_metrics(out, terms), sync_dist=True)
        return terms["objective"]

    @torch.no_grad()
    def step_l0(self, out: Code, terms: dict[str, Tensor]) -> Tensor:
        """L0 is a loss term of some models (JumpReLU's gates), measured here for the others."""
        if "l0" in terms:
            return terms["l0"].detach()
        if isinstance(out.a, SparseCode):
            return (out.a.values > 0).sum() / out.a.shape[0]
        return (out.a > 0).sum(-1).float().mean()

    @torch.no_grad()
    def step_metrics(self, out: Code, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per example like val/*; the objective too where it differs (a sum over the batch). Computed only at
        the steps Lightning logs: the rest of the time they would cost more than a small model's step."""
        logged = {f"train/{name}": value for name, value in terms.items()
                  if name not in ("total", "objective", "l0")}
        if self.loss.reduction == "sum":
            logged["train/objective"] = terms["objective"]
        if self.sparsity_warmup:
            logged["train/sparsity_scale"] = torch.tensor(self.sparsity_scale())
        logged["train/weight_norm"] = self.feature_directions().norm()
        return logged

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """The model's own clipping (``model.gradient_clip_val``), else the trainer's."""
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.normalize_weights()  # part of the step: a checkpoint written after it holds the constrained weights

    def validation_step(self, batch, batch_idx):
        out = self(batch[0])
        terms = self.losses(out)
        self.log_dict({f"val/{name}": value for name, value in terms.items() if name != "objective"}, sync_dist=True)
        return out

    def parameter_groups(self) -> list[dict]:
        """Adam's parameter groups; a model whose parameters need their own learning rate splits them."""
        return [{"params": list(self.parameters())}]

    def configure_optimizers(self):
        # fused: one pass per parameter instead of a dozen foreach passes (a 4x shorter Adam step at LM width)
        optimizer = torch.optim.Adam(self.parameter_groups(), lr=self.lr, fused=True)
        if self.lr_decay == 0:
            return optimizer
        total = self.trainer.estimated_stepping_batches
        decay_start = (1 - self.lr_decay) * total

        def factor(step: int) -> float:  # constant, then linear to 0 over the last lr_decay of the steps
            return 1.0 if step < decay_start else max(0.0, (total - step) / (total - decay_start))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def check_finite(self, terms: dict[str, Tensor]) -> None:
        if math.isfinite(terms["objective"].item()):
            return
        bad = [name for name, value in terms.items()
               if name not in ("total", "objective") and not torch.isfinite(value)]
        raise NonFiniteLossError(
            f"non-finite loss at step {self.global_step}: term(s) {bad or ['total']} "
            f"= {[float(terms[name].detach()) for name in bad or ['total']]}"
        )
