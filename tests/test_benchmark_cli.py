"""Experiment 3 and lambda calibration through the real train.py, on synthetic data with tiny budgets."""
import pytest

from conftest import QUICK, read_metrics, run_cli

BENCH_KEYS = {"l0", "fvu", "explained_variance", "fvu_affine", "mse", "probe_acc", "probe_acc_init", "params",
              "dead_fraction"}


TINY_BENCHMARK = """# @package _global_
defaults:
  - benchmark
hydra:
  sweeper:
    grid_params:
      seed: 0,1
    list_params:
      model: encoder,sae,sae_tied,topk
      loss: lse_var_tc,mse_l1,mse_l1,mse_auxk
      +sparsity: 0,0.01,0.01,4
"""


def test_benchmark_sweep_and_analysis_end_to_end(tmp_path):
    """The real benchmark preset, with its grid cut to four columns by a config that inherits it."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "benchmark_tiny.yaml").write_text(TINY_BENCHMARK)
    sweep = tmp_path / "sweep"
    run_cli("train.py", "-m", "--config-dir", str(tmp_path / "conf"), "experiment=benchmark_tiny", *QUICK,
            "model.hidden_dim=16", "trainer.limit_train_batches=40", f"hydra.sweep.dir={sweep}")
    runs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert len(runs) == 8
    metrics = [read_metrics(run) for run in runs]
    assert all(BENCH_KEYS <= set(m) and m["status"] == "finished" for m in metrics)
    assert {m["l0"] for m in metrics if m["params"] == 16 * 32 * 2 + 16 + 32} >= {4.0}  # TopK's k reached it
    assert "mse_raw" in metrics[0] and "alpha" in metrics[0]  # the encoder's implicit-decoder diagnostics
    result = run_cli("-m", "analysis.benchmark", f"dir={sweep}")
    assert (sweep / "analysis" / "figure3_benchmark.png").is_file()
    table = (sweep / "analysis" / "benchmark.md").read_text()
    assert table.startswith("# Benchmark (test set; mean ± std over seeds, n = 2 seeds)")
    for row in ("| encoder:lse_var_tc (sparsity 0) | 2 |", "| PCA, k = 16 |", "| raw-input probe |",
                "| random-init encoder |", "| sae_tied:mse_l1 (nearest L0"):
        assert row in table, row
    assert "sae:mse_l1 (nearest L0" in result.stdout


def test_calibration_lands_near_the_target_l0(tmp_path):
    run_cli("train.py", "model=sae", *QUICK, "calibrate.target_l0=4", "model.lr=0.01", "calibrate.lambda_max=100",
            "calibrate.num=5", "calibrate.epochs=2", "trainer.max_epochs=2", "callbacks.final_evaluation.probe=false",
            f"hydra.run.dir={tmp_path}")
    metrics = read_metrics(tmp_path)
    assert abs(metrics["l0"] - 4) <= 0.2 * 4, metrics["l0"]
    assert metrics["calibration_target_l0"] == 4 and len(metrics["calibration_grid"]) >= 5
    assert metrics["calibration_lambda"] in [lam for lam, _ in metrics["calibration_grid"]]


def test_a_jumprelu_s_l0_follows_lambda_and_the_calibration_lands_within_10_percent(tmp_path):
    """theta learns at model.threshold_lr_scale x lr; at 1x this grid sat at L0 17.5 for lambda 1 and 10 and the
    run ended at 13.7."""
    run_cli("train.py", "model=jumprelu", "calibrate.target_l0=10", "trainer.max_epochs=2", "logger=csv",
            "callbacks.unit_metrics.figures=false", "callbacks.final_evaluation.probe=false", f"hydra.run.dir={tmp_path}")
    metrics = read_metrics(tmp_path)
    assert abs(metrics["l0"] - 10) <= 1.0, metrics["l0"]
    l0_by_lambda = dict(metrics["calibration_grid"])
    assert l0_by_lambda[10] < l0_by_lambda[1] < 0.25 * l0_by_lambda[0.0001], l0_by_lambda


@pytest.mark.parametrize("overrides, message", [
    (["model=sae", "calibrate.target_l0=0"], "calibrate.target_l0 must be in (0, model.hidden_dim=64]"),
    (["model=sae", "calibrate.target_l0=65"], "calibrate.target_l0 must be in"),
    (["model=topk", "calibrate.target_l0=2"], "calibration needs a loss with one sparsity penalty"),
    (["model=topk", "+sparsity=65"], "model.k must be in [1, hidden_dim=64]"),
    (["model=encoder", "loss=mse_l1"], "loss term 'mse' needs ['decoder_norms', 'nonnegative_codes', 'x_hat'] (a "
                                       "Reconstruction), which DecoderFreeEncoder does not produce"),
])
def test_a_model_and_loss_that_do_not_fit_fail_in_one_line(tmp_path, overrides, message):
    result = run_cli("train.py", *QUICK, *overrides, f"hydra.run.dir={tmp_path}", check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith("error: ") and message in last, last
    assert "Traceback" not in result.stderr
