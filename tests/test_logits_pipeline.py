"""Classifier logits as data, and the logits-SAE pipeline through the real train.py."""
import json

import pytest
import pytorch_lightning as pl
import torch

from conftest import read_metrics, run_cli
from datamodules.logits import LogitsDataModule
from datamodules.mnist import MNISTDataModule
from lightning_modules.classifier import MLPClassifier

TINY = ["logger=csv", "trainer.max_epochs=1", "calibrate.num=3", "calibrate.refine_steps=1",
        "calibrate.lambda_min=0.1", "trainer.limit_train_batches=30", "callbacks.unit_metrics.figures=false"]


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("classifier") / "classifier.ckpt"
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_steps=150, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0)
    trainer.fit(MLPClassifier(hidden_dim=32), datamodule=MNISTDataModule(input_dim=784, batch_size=64))
    trainer.save_checkpoint(path)
    return path


def logits_data(ckpt, tmp_path, **kwargs):
    return LogitsDataModule(classifier=MLPClassifier(hidden_dim=32), classifier_ckpt=str(ckpt),
                            output_dir=str(tmp_path), input_dim=10, **kwargs)


def test_logits_are_cached_beside_the_checkpoint_and_round_trip(classifier_ckpt, tmp_path):
    first = logits_data(classifier_ckpt, tmp_path)
    first.setup()
    caches = list(classifier_ckpt.parent.glob("classifier.logits-*.pt"))
    assert len(caches) == 1
    assert [len(first.splits[s][0]) for s in ("train", "val", "test")] == [48000, 12000, 10000]
    classifier = MLPClassifier.load_from_checkpoint(classifier_ckpt).eval()
    x_test, _ = MNISTDataModule(input_dim=784).read_split("t10k")
    with torch.no_grad():
        torch.testing.assert_close(first.splits["test"][0], classifier(x_test))
    second = logits_data(classifier_ckpt, tmp_path)
    second.setup()  # from the cache
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split][0], second.splits[split][0])
        assert torch.equal(first.splits[split][1], second.splits[split][1])
        assert not first.splits[split][0].requires_grad


def test_standardised_logits_invert_to_the_classifier_outputs(classifier_ckpt, tmp_path):
    raw, standardised = logits_data(classifier_ckpt, tmp_path), logits_data(classifier_ckpt, tmp_path,
                                                                            normalize="standardize")
    raw.setup(), standardised.setup()
    torch.testing.assert_close(standardised.splits["train"][0].std(0), torch.ones(10), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.inverse(standardised.splits["val"][0]), raw.splits["val"][0])


def test_pipeline_end_to_end_with_a_given_classifier(classifier_ckpt, tmp_path):
    run_cli("train.py", "experiment=logits_jumprelu", f"data.classifier_ckpt={classifier_ckpt}", *TINY,
            f"hydra.run.dir={tmp_path}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("target_actives", "achieved_actives_val", "lambda", "baseline_acc", "recon_acc_logits",
                "delta_acc_logits", "sae_latents", "tau", "normalize_logits", "sae_batch_size",
                "classifier_batch_size"):
        assert key in summary, key
    assert summary["sae_latents"] == 32 and summary["target_actives"] == 1
    assert summary["lambda"] == read_metrics(tmp_path)["calibration_lambda"]
    test = summary["splits"]["test"]
    assert test["delta_acc"] == pytest.approx(test["acc"] - test["acc_recon"])  # the reference's sign: lost
    assert summary["delta_acc_logits"] == test["delta_acc"]
    assert test["acc"] > 0.5  # the classifier's own logits
    per_example = summary["val_mse_per_example"]
    assert per_example["best_index"] != per_example["worst_index"] and per_example["p95"] >= per_example["median"]
    report = (tmp_path / "BEST_RESULTS.md").read_text()
    assert "| test |" in report and "Δacc" in report


@pytest.mark.parametrize("override, message", [
    ("data.classifier_ckpt=/nonexistent/classifier.ckpt", "classifier checkpoint not found: /nonexistent"),
    ("calibrate.target_l0=33", "calibrate.target_l0 must be in (0, model.hidden_dim=32]"),
    ("calibrate.target_l0=-1", "calibrate.target_l0 must be in"),
])
def test_bad_pipeline_input_fails_in_one_line(tmp_path, override, message):
    result = run_cli("train.py", "experiment=logits_jumprelu", override, *TINY, f"hydra.run.dir={tmp_path}", check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith("error: ") and message in last, last
    assert "Traceback" not in result.stderr


def test_a_checkpoint_of_another_model_does_not_match(tmp_path):
    ckpt = tmp_path / "not_a_classifier.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(3)}, "hyper_parameters": {"hidden_dim": 4}}, ckpt)
    result = run_cli("train.py", "experiment=logits_sae", f"data.classifier_ckpt={ckpt}", *TINY,
                     f"hydra.run.dir={tmp_path}", check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: classifier checkpoint {ckpt} does not match the data"), last


TINY_FRONTIER = """# @package _global_
defaults:
  - logits_frontier
hydra:
  sweeper:
    grid_params:
      seed: 0,1
    list_params:
      model: gated,topk,batchtopk
      loss: mse_gated,mse_auxk,mse_auxk
      calibrate.target_l0: 2,null,null
      sparsity: 0.1,1,2
"""


def test_frontier_sweep_and_analysis_on_a_shared_classifier(classifier_ckpt, tmp_path):
    """The real frontier preset with its grid cut to a calibrated penalty model, TopK and BatchTopK, 2 seeds."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "frontier_tiny.yaml").write_text(TINY_FRONTIER)
    sweep = tmp_path / "sweep"
    run_cli("train.py", "-m", "--config-dir", str(tmp_path / "conf"), "experiment=frontier_tiny",
            f"data.classifier_ckpt={classifier_ckpt}", *TINY, f"hydra.sweep.dir={sweep}")
    result = run_cli("-m", "analysis.logits", f"dir={sweep}")
    table = (sweep / "analysis" / "logits_frontier.md").read_text()
    assert (sweep / "analysis" / "logits_frontier.png").is_file()
    assert "| gated | target L0 2 | 2 |" in table and "| topk | k 1 | 2 |" in table
    assert "| batchtopk | k 2 | 2 |" in table and "## Goals" in result.stdout


def test_the_default_experiment_keeps_one_latent_and_two_points_of_accuracy(tmp_path):
    """``train.py experiment=logits_sae`` as a user first runs it: its own classifier, every default."""
    run_cli("train.py", "experiment=logits_sae", "logger=csv", f"hydra.run.dir={tmp_path}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    test = summary["splits"]["test"]
    assert test["l0"] <= 1.1 and test["delta_acc"] <= 0.02, test
    assert summary["pca_at_l0"]["k"] == 1 and summary["pca_at_l0"]["delta_acc"] > test["delta_acc"]  # it beats the PCA
    report = (tmp_path / "BEST_RESULTS.md").read_text()
    assert "| the seed's reference JumpReLU | 1.63 | 5.62 |" in report
    assert "Goal, L0 ≤ 1.1 losing at most 2 points: met." in report
