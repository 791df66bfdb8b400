"""What every model shares: its loss from the registry, per-term logging, the finiteness guard,
the optimiser step (one per batch, or one per batch of a StepGroup). Subclasses define ``encode``
(pre-activations and code), ``forward`` (the dict the loss terms read) and ``feature_directions`` (one
row per latent, for the cosine figure)."""
import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import Precision
from pytorch_lightning.strategies import SingleDeviceStrategy
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import Tensor

from datamodules.resumable import StepGroup, optimizer_steps
from lightning_modules.losses import CompositeLoss


class NonFiniteLossError(RuntimeError):
    pass


class SparseCoder(pl.LightningModule):
    provides: frozenset[str] = frozenset()

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
        loss.check_outputs(self.provides, type(self).__name__)
        self.loss = loss
        self.lr, self.sparsity_warmup, self.lr_decay = lr, sparsity_warmup, lr_decay
        self.gradient_clip_val = gradient_clip_val
        # the step below, not Lightning's automatic loop: with its closure and hooks, an empty step's batch
        # costs 1.0 ms here against 0.6 ms, and 784 -> 64 models step 6% faster (README, Speed)
        self.automatic_optimization = False
        # inputs are multiplied by this inside the model, so that every public method takes raw data and
        # a checkpoint carries its scaling (LM activations: sqrt(d) / E||x||); losses see scaled data
        self.register_buffer("input_scale", torch.ones(()))

    def __setattr__(self, name: str, value) -> None:
        # Lightning names the running hook here around every hook call, about 44 times a step; nn.Module's
        # own __setattr__ (which looks for parameters, buffers and submodules) is a tenth of a small step
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def setup(self, stage: str) -> None:
        scale = getattr(self.trainer.datamodule, "input_scale", None)
        if scale is not None:
            self.input_scale.fill_(scale)

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
        return min(1.0, self.global_step / (self.sparsity_warmup * self.total_steps))

    def global_batch(self, values: Tensor) -> Tensor:
        """Every rank's rows of ``values``, in rank order, differentiable with respect to this rank's."""
        return self.all_gather(values, sync_grads=True).flatten(0, 1)

    def losses(self, out: dict, **options) -> dict[str, Tensor]:
        ranks = self.trainer.world_size if self._trainer else 1
        return self.loss(out, global_batch=self.global_batch if ranks > 1 else None, ranks=ranks, **options)

    def on_train_start(self) -> None:
        self.total_steps = optimizer_steps(self.trainer)
        self.plain_steps = self.nothing_wraps_a_step()

    def nothing_wraps_a_step(self) -> bool:
        """Whether Lightning's backward and optimiser step would only add hook calls around the bare ones: one
        device, full precision, and no callback or module that overrides a hook of theirs. They cost ~0.13 ms
        a step (3 hooks x every callback, each in a profiler context), a tenth of a 784 -> 64 step."""
        hooks = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")
        return (type(self.trainer.strategy) is SingleDeviceStrategy and type(self.trainer.precision_plugin) is Precision
                and not any(is_overridden(hook, self, pl.LightningModule) for hook in (*hooks, "backward"))
                and not any(is_overridden(hook, callback, pl.Callback)
                            for callback in self.trainer.callbacks for hook in hooks))

    def training_step(self, batch, batch_idx):
        batches = batch if isinstance(batch, StepGroup) else [batch]
        for steps, minibatch in enumerate(batches, start=1):
            self.optimization_step(minibatch)
            if self.global_step == self.trainer.max_steps:
                break
        # Lightning counts a batch as one step on the logger's x-axis (validation's included): keep it at the
        # optimiser's count, which is where log_step writes
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += steps - 1

    def optimization_step(self, batch) -> None:
        out = self(batch[0])
        terms = self.losses(out, sparsity_scale=self.sparsity_scale())
        self._check_finite(terms)
        every = self.trainer.log_every_n_steps  # Lightning's cadence, where 0 logs nothing
        if every and (self.global_step + 1) % every == 0:
            self.log_step(out, terms)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        if self.plain_steps:
            terms["objective"].backward()
        else:
            self.manual_backward(terms["objective"])
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        if self.plain_steps:  # the trainer's step count and profiler, as LightningOptimizer.step has them
            optimizer._on_before_step()
            optimizer.optimizer.step()
            optimizer._on_after_step()
        else:
            optimizer.step()
        if (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()
        self.normalize_weights()

    @torch.no_grad()
    def log_step(self, out: dict, terms: dict[str, Tensor]) -> None:
        """Per example like val/*, averaged over ranks (a per-rank sum is already scaled by the ranks); the
        objective too where it differs (a sum over the batch). Straight to the loggers at this optimiser
        step, and into callback_metrics (the progress bar, metrics.json): through self.log, each value
        would cost ~0.5 ms, more than a whole step of a small model (benchmarks/speed.py)."""
        logged = {f"train/{name}": value for name, value in terms.items() if name not in ("total", "objective")}
        if self.loss.reduction == "sum":
            logged["train/objective"] = terms["objective"]
        # L0 is a loss term of some models (JumpReLU's gates), measured here for the others
        if "train/l0" not in logged:
            logged["train/l0"] = (out["a"] > 0).sum(-1).float().mean()
        logged["train/total"] = terms["total"]
        values = torch.stack([value.detach().float() for value in logged.values()])
        values = self.trainer.strategy.reduce(values, reduce_op="mean")
        logged = dict(zip(logged, values.cpu()))
        if self.sparsity_warmup:
            logged["train/sparsity_scale"] = torch.tensor(self.sparsity_scale())
        logged["train/weight_norm"] = self.feature_directions().detach().norm().cpu()
        self.trainer.callback_metrics.update(logged)
        scalars = {name: float(value) for name, value in logged.items()} | {"epoch": self.current_epoch}  # as Lightning
        for logger in self.loggers:
            logger.log_metrics(scalars, step=self.global_step)

    def validation_step(self, batch, batch_idx):
        out = self(batch[0])
        terms = self.losses(out)
        self.log_dict({f"val/{name}": value for name, value in terms.items() if name != "objective"}, sync_dist=True)
        return out

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        if self.lr_decay == 0:
            return optimizer
        total = optimizer_steps(self.trainer)
        decay_start = (1 - self.lr_decay) * total

        def factor(step: int) -> float:  # constant, then linear to 0 over the last lr_decay of the steps
            return 1.0 if step < decay_start else max(0.0, (total - step) / (total - decay_start))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}  # stepped by training_step

    def _check_finite(self, terms: dict[str, Tensor]) -> None:
        if math.isfinite(terms["objective"].item()):  # torch.isfinite and bool() cost 13 µs more here, a step
            return
        bad = [name for name, value in terms.items()
               if name not in ("total", "objective") and not torch.isfinite(value)]
        raise NonFiniteLossError(
            f"non-finite loss at step {self.global_step}: term(s) {bad or ['total']} "
            f"= {[float(terms[name].detach()) for name in bad or ['total']]}"
        )
