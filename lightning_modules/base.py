"""What every model shares: its loss from the registry, per-term logging, the finiteness guard,
the optimiser. Subclasses define ``encode`` (pre-activations and code), ``forward`` (the dict the
loss terms read) and ``feature_directions`` (one row per latent, for the cosine figure)."""
import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_modules.losses import CompositeLoss


class NonFiniteLossError(RuntimeError):
    pass


class SparseCoder(pl.LightningModule):
    provides: frozenset[str] = frozenset()

    def __init__(self, loss: CompositeLoss, lr: float):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        loss.check_outputs(self.provides, type(self).__name__)
        self.loss = loss
        self.lr = lr

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def feature_directions(self) -> Tensor:
        raise NotImplementedError

    def normalize_weights(self) -> None:
        """Constraints re-imposed after every optimiser step (unit-norm rows or columns)."""

    def sparsity_scale(self) -> float:
        return 1.0

    def training_step(self, batch, batch_idx):
        terms = self.loss(self(batch[0]), sparsity_scale=self.sparsity_scale())
        self._check_finite(terms)
        self.log_dict({f"train/{name}": value for name, value in terms.items()})
        self.log("train/weight_norm", self.feature_directions().detach().norm())
        return terms["total"]

    def validation_step(self, batch, batch_idx):
        out = self(batch[0])
        terms = self.loss(out, reduction="mean")  # per example, whatever the eval batch size
        self.log_dict({f"val/{name}": value for name, value in terms.items()})
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.normalize_weights()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def _check_finite(self, terms: dict[str, Tensor]) -> None:
        if torch.isfinite(terms["total"]):
            return
        bad = [name for name, value in terms.items() if name != "total" and not torch.isfinite(value)]
        raise NonFiniteLossError(
            f"non-finite loss at step {self.global_step}: term(s) {bad or ['total']} "
            f"= {[float(terms[name].detach()) for name in bad or ['total']]}"
        )
