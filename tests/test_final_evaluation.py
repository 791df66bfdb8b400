"""The end-of-fit evaluation reports its metrics to callback_metrics, metrics.json and the loggers,
and leaves the trained weights in the model after probing the initial ones."""
import copy
import csv
import json

import pytorch_lightning as pl
import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

from callbacks.final_evaluation import FinalEvaluation
from callbacks.metrics_file import MetricsFile
from datamodules.gaussian_mixture import GaussianMixtureDataModule
from lightning_modules.encoder import DecoderFreeEncoder
from lightning_modules.losses import CompositeLoss
from lightning_modules.sae import SparseAutoencoder

KEYS = {"mse_raw", "mse", "fvu", "explained_variance", "fvu_affine", "alpha", "l0_test", "probe_acc", "probe_acc_init"}


class TrainedWeights(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        self.state = copy.deepcopy(pl_module.state_dict())


def test_final_evaluation_of_the_decoder_free_encoder(tmp_path):
    pl.seed_everything(0, verbose=False)
    data = GaussianMixtureDataModule(input_dim=8, n_train=512, n_val=128, n_test=128, batch_size=64)
    model = DecoderFreeEncoder(8, 16, CompositeLoss({"lse": 1, "variance": 1, "decorrelation": 1}))
    initial = copy.deepcopy(model.state_dict())
    evaluation, trained = FinalEvaluation(), TrainedWeights()
    trainer = pl.Trainer(max_epochs=1, logger=CSVLogger(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0,
                         callbacks=[trained, evaluation, MetricsFile(str(tmp_path / "metrics.json"))])
    trainer.fit(model, datamodule=data)

    values = {name: float(trainer.callback_metrics[name]) for name in KEYS}
    assert all(0 <= values[name] <= 1 for name in ("probe_acc", "probe_acc_init"))
    assert 0 <= values["l0_test"] <= 16
    assert values["explained_variance"] == pytest.approx(1 - values["fvu"])
    # mse and fvu share their numerator; the denominator is the test spread around the TRAIN mean
    (x_train, _), (x_test, _) = data.splits["train"], data.splits["test"]
    spread = float((x_test.double() - x_train.double().mean(0)).square().mean())
    assert values["mse"] == pytest.approx(values["fvu"] * spread)
    # No fvu_affine <= fvu: the affine decoder is the least-squares optimum on train, which contains the
    # alpha-scaled W^T decoder, but on test either can win. Both are ratios of sums of squares.
    assert values["fvu"] >= 0 and values["fvu_affine"] >= 0

    # the initial weights were probed, then the trained ones restored
    assert all(torch.equal(evaluation.initial_state[name], initial[name]) for name in initial)
    assert not torch.equal(trained.state["linear.weight"], initial["linear.weight"])
    assert all(torch.equal(model.state_dict()[name], trained.state[name]) for name in initial)

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["status"] == "trained" and KEYS <= written.keys()  # "finished" is train.py's, after all else
    with open(trainer.logger.log_dir + "/metrics.csv") as file:
        logged = [row for row in csv.DictReader(file) if row["probe_acc"]]
    assert float(logged[-1]["probe_acc"]) == pytest.approx(values["probe_acc"])


def test_without_the_probe_no_copy_of_the_initial_weights_is_kept_or_checkpointed(tmp_path):
    data = GaussianMixtureDataModule(input_dim=8, n_train=256, n_val=64, n_test=64, batch_size=64)
    evaluation = FinalEvaluation(probe=False)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, callbacks=[evaluation])
    trainer.fit(DecoderFreeEncoder(8, 16, CompositeLoss({"lse": 1})), datamodule=data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    assert evaluation.initial_state is None and [state["initial_state"] for state in saved.values()] == [None]
    assert "probe_acc" not in trainer.callback_metrics and "fvu" in trainer.callback_metrics


@pytest.mark.parametrize("latents", [16, 600])  # fewer latents than train rows (512), then more
def test_the_streamed_evaluation_of_an_sae_equals_the_whole_split_one(latents):
    """Without the probe, an SAE's test metrics are sums over chunks of test (callbacks/final_evaluation.py):
    the same values as with the codes held whole."""
    pl.seed_everything(0, verbose=False)
    data = GaussianMixtureDataModule(input_dim=8, n_train=512, n_val=64, n_test=300, batch_size=64)
    model = SparseAutoencoder(8, latents, CompositeLoss({"mse": 1, "l1": 0.1}), lr=1e-2)
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    measured = {}
    for probe in (True, False):
        evaluation = FinalEvaluation(probe=probe, chunk_size=64)
        evaluation.initial_state = copy.deepcopy(model.state_dict())
        evaluation.read_out(trainer, model)
        measured[probe] = {name: float(trainer.callback_metrics[name])
                           for name in ("l0_test", "mse", "fvu", "explained_variance", "fvu_affine")}
    assert 0 < measured[False]["fvu"] < 1 and measured[False]["l0_test"] > 0
    assert measured[False] == pytest.approx(measured[True], rel=1e-5)  # float32 codes, float64 sums
