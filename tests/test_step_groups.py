"""Several optimiser steps per Lightning batch (data.steps_per_batch): the same training, step for step."""
import csv

import pytorch_lightning as pl
import torch

from callbacks.resume import StepCheckpoint
from conftest import QUICK, measured, run_cli
from datamodules.gaussian_mixture import GaussianMixtureDataModule
from lightning_modules.encoder import DecoderFreeEncoder
from lightning_modules.losses import CompositeLoss

# 32 batches an epoch, so the second epoch's groups of 10 start off the multiples of 10; a log every 7 steps
# and a sparsity warm-up and lr decay that depend on the step count
ARGS = [*QUICK, "trainer.max_epochs=2", "trainer.log_every_n_steps=7", "+model.sparsity_warmup=0.3",
        "+model.lr_decay=0.5", "callbacks.final_evaluation.probe=false"]


def logged_rows(run_dir) -> list[dict]:
    with open(next(run_dir.glob("csv/*/metrics.csv"))) as rows:
        return list(csv.DictReader(rows))


def test_grouped_steps_train_log_and_checkpoint_as_one_step_a_batch_does(tmp_path):
    for group in (1, 10):
        run_cli("train.py", *ARGS, f"data.steps_per_batch={group}", f"hydra.run.dir={tmp_path / str(group)}")
    one, grouped = tmp_path / "1", tmp_path / "10"
    assert measured(one) == measured(grouped) and measured(one)["global_step"] == 64
    rows = logged_rows(one)
    assert rows == logged_rows(grouped)
    assert [row["step"] for row in rows if row["train/total"]] == [str(s) for s in range(6, 64, 7)]
    weights = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for run in (one, grouped)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(value, weights[1][name]) for name, value in weights[0].items())


def test_a_grouped_fit_stops_at_max_steps_and_checkpoints_when_a_batch_passes_a_multiple(tmp_path):
    data = GaussianMixtureDataModule(input_dim=8, n_train=1024, n_val=128, n_test=128, batch_size=64,
                                     steps_per_batch=3)  # 16 steps an epoch: groups of 3, 3, 3, 3, 3, 1
    model = DecoderFreeEncoder(8, 16, CompositeLoss({"lse": 1, "variance": 1}, reduction="sum"))
    saved = []
    checkpoint = StepCheckpoint(str(tmp_path / "last.ckpt"), every_n_steps=5)
    trainer = pl.Trainer(max_steps=25, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[checkpoint],
                         default_root_dir=tmp_path)
    trainer.save_checkpoint = lambda path: saved.append(trainer.global_step)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 25
    # group ends: 3 6 9 12 15 16 | 19 22 25; a save at the first end at or past each multiple of 5
    assert saved == [6, 12, 15, 22, 25]
