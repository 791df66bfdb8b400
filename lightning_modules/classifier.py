"""The MNIST classifier whose logits the SAEs study: an FFN x_bi -> h_bh -> y_bo trained by cross-entropy.
relu: h = relu(W_in x); geglu: h = gelu(W_gate x) * (W_in x); then y = W_out h."""
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.base import NonFiniteLossError

ACTIVATIONS = ("relu", "geglu")


class MLPClassifier(pl.LightningModule):
    def __init__(self, input_dim: int = 784, hidden_dim: int = 128, n_classes: int = 10,
                 activation: str = "relu", lr: float = 1e-3):
        super().__init__()
        if hidden_dim <= 0:
            raise ValueError(f"model.hidden_dim must be > 0, got {hidden_dim}")
        if lr <= 0:
            raise ValueError(f"model.lr must be > 0, got {lr}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown model.activation {activation!r}; choose from {list(ACTIVATIONS)}")
        self.save_hyperparameters(logger=False)  # train.py logs the whole config once
        self.w_in = nn.Linear(input_dim, hidden_dim)
        self.w_gate = nn.Linear(input_dim, hidden_dim) if activation == "geglu" else None
        self.w_out = nn.Linear(hidden_dim, n_classes)
        # epoch metrics accumulate over batches, so eval batch size and a ragged last batch do not bias them
        self.ce = nn.ModuleDict({split: MeanMetric() for split in ("val", "test")})
        self.acc = nn.ModuleDict({split: MulticlassAccuracy(n_classes, average="micro") for split in ("val", "test")})

    def hidden(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        h = self.w_in(x)
        return F.gelu(self.w_gate(x)) * h if self.w_gate is not None else F.relu(h)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(self.hidden(x))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if not torch.isfinite(loss):  # a diverged lr stops here instead of training on NaNs
            raise NonFiniteLossError(f"non-finite loss at step {self.global_step}: 'ce' = {float(loss.detach())}")
        self.log("train/ce", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], split: str) -> None:
        x, y = batch
        logits = self(x)
        self.ce[split].update(F.cross_entropy(logits, y), weight=len(y))
        self.acc[split].update(logits, y)
        self.log(f"{split}/ce", self.ce[split], on_epoch=True)
        self.log(f"{split}/acc", self.acc[split], on_epoch=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_test_epoch_start(self) -> None:
        # trainer.test clears the fit's val/* and tests the best, not the last, weights: re-measure val/*
        # on the weights under test so that metrics.json pairs val/* and test/* of the same checkpoint
        for x, y in self.trainer.datamodule.val_dataloader():
            self._evaluate((x.to(self.device), y.to(self.device)), "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        # fused: one kernel over all parameters; at batch 8 and hidden 8192 the update costs more than the model
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, fused=True)
