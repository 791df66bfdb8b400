"""The MNIST classifier: its GeGLU and ReLU variants, and `train.py -m experiment=classifier_sweep` with
`analysis.classifier` on a budget of 100 steps (batch 8), which reaches about 0.8 test accuracy."""
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from runtime import job
import train
from analysis.classifier import ranked
from analysis.runs import Run
from conftest import ROOT, read_metrics, run_cli
from datamodules.mnist import MNISTDataModule
from lightning_modules.classifier import MLPClassifier

BUDGET = ["trainer.limit_train_batches=100", "trainer.max_epochs=1", "logger=csv"]


def test_geglu_shapes_and_every_parameter_gets_a_gradient():
    model = MLPClassifier(hidden_dim=16, activation="geglu")
    x, y = torch.rand(5, 1, 28, 28), torch.randint(0, 10, (5,))  # images are flattened by the model
    assert model.hidden(x).shape == (5, 16) and model(x).shape == (5, 10)
    F.cross_entropy(model(x), y).backward()
    names = {name for name, _ in model.named_parameters()}
    assert {"w_gate.weight", "w_gate.bias"} <= names
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_relu_has_no_gate():
    model = MLPClassifier(hidden_dim=16)
    assert model.w_gate is None and not any("gate" in name for name, _ in model.named_parameters())
    assert sum(p.numel() for p in model.parameters()) == 784 * 16 + 16 + 16 * 10 + 10


def test_ranking_puts_diverged_runs_last():
    runs = [Run(None, {}, {}, metrics, []) for metrics in
            ({"val/ce": "nan"}, {"val/ce": 0.3}, {}, {"val/ce": 0.1}, {"val/ce": "inf"})]
    order = [run.metrics.get("val/ce") for run in ranked(runs)]
    assert order[:2] == [0.1, 0.3] and set(map(str, order[2:])) == {"nan", "inf", "None"}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("classifier_sweep")
    run_cli("train.py", "-m", "experiment=classifier_sweep", "model.hidden_dim=64", "model.lr=1e-3,1e-2", *BUDGET,
            f"hydra.sweep.dir={sweep}")
    return sweep


def test_sweep_tests_the_best_checkpoint_which_reloads(sweep_dir):
    runs = sorted(p for p in sweep_dir.iterdir() if p.name.isdigit())
    assert len(runs) == 2
    data = MNISTDataModule(input_dim=784)
    data.setup()
    for run in runs:
        metrics = read_metrics(run)
        assert metrics["status"] == "finished" and metrics["test/acc"] > 0.5
        assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}  # last resumes
        model = MLPClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt")
        assert model.hparams.hidden_dim == 64
        with torch.no_grad():  # the reloaded weights reproduce every number metrics.json reports
            for split in ("val", "test"):
                x, y = data.splits[split]
                logits = model(x)
                assert F.cross_entropy(logits, y).item() == pytest.approx(metrics[f"{split}/ce"], rel=1e-4)
                assert (logits.argmax(1) == y).float().mean().item() == pytest.approx(metrics[f"{split}/acc"])


def test_analysis_ranks_by_validation_ce(sweep_dir):
    result = run_cli("-m", "analysis.classifier", f"dir={sweep_dir}")
    out = sweep_dir / "analysis"
    assert (out / "classifier_ce_vs_lr.pdf").stat().st_size > 0 and (out / "classifier_ce_vs_lr.png").is_file()
    table = (out / "classifier_top3.md").read_text()
    assert table.count("| 64 |") == 2
    best = min((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: read_metrics(p)["val/ce"])
    assert f"best checkpoint: {best / 'checkpoints' / 'best.ckpt'}" in result.stdout


def test_unknown_activation_fails_in_one_line_before_training(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=classifier", "model.activation=tanh", "logger=csv",
                                          "torch_threads=null", f"paths.output_dir={tmp_path}"])  # pytest's stay
    assert "loss" not in cfg and cfg.callbacks.unit_metrics is None and cfg.callbacks.final_evaluation is None
    with pytest.raises(job.RunError) as error:
        train.train(cfg)
    assert str(error.value) == "error: unknown model.activation 'tanh'; choose from ['relu', 'geglu']"
    assert not (tmp_path / "metrics.json").exists()
