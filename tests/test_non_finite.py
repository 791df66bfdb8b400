"""A loss that turns non-finite mid-training stops the run and leaves the last good checkpoint."""
import json

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from callbacks.metrics_file import MetricsFile
from datamodules.gaussian_mixture import GaussianMixtureDataModule
from lightning_modules.base import NonFiniteLossError
from lightning_modules.encoder import DecoderFreeEncoder
from lightning_modules.losses import CompositeLoss


class PoisonAtEpoch(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.linear.bias[0] = float("inf")


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    data = GaussianMixtureDataModule(input_dim=6, n_train=256, n_val=64, n_test=64, batch_size=64)
    model = DecoderFreeEncoder(6, 4, CompositeLoss({"lse": 1.0, "variance": 1.0}))
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, num_sanity_val_steps=0,
                         callbacks=[PoisonAtEpoch(), ModelCheckpoint(dirpath=tmp_path, save_last=True),
                                    MetricsFile(str(tmp_path / "metrics.json"))])
    with pytest.raises(NonFiniteLossError, match=r"step 4: term\(s\) \['variance'\] = \[nan\]"):
        trainer.fit(model, datamodule=data)
    state = torch.load(tmp_path / "last.ckpt")
    assert state["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())
    assert json.loads((tmp_path / "metrics.json").read_text())["status"].startswith("failed")
