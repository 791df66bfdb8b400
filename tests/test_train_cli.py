"""The real train.py and analysis commands, through Hydra, on small data."""
import math
import os
import subprocess
import sys
import time
from datetime import datetime

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from callbacks.stopwatch import PHASES
from conftest import QUICK, ROOT, read_metrics, run_cli, wandb_run

UNIT_KEYS = {"dead_units", "frac_zero_active", "dead_fraction", "dead_at_init", "low_variance_units", "redundancy",
             "redundancy_norm",
             "resp_entropy", "max_resp", "effective_components", "l0", "l0_eps", "blocked_resp_mass",
             "weight_norm", "params"}


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("ablation")
    run_cli("train.py", "-m", "loss=lse,lse_var,lse_var_tc,var_tc", *QUICK, "model.hidden_dim=16",
            f"hydra.sweep.dir={sweep}")
    return sweep


def test_ablation_sweep_writes_config_metrics_and_checkpoints_per_run(ablation_dir):
    runs = sorted(p for p in ablation_dir.iterdir() if p.name.isdigit())
    assert len(runs) == 4
    for run in runs:
        metrics = read_metrics(run)
        assert metrics["status"] == "finished"
        assert UNIT_KEYS | {"val/lse", "val/variance", "val/decorrelation", "val/total"} <= set(metrics)
        assert metrics["params"] == 32 * 16 + 16
        histogram = np.load(run / "unit_stats.npz")["active_counts"]  # validation examples by their active latents
        assert histogram.sum() == 1024 and histogram[0] / 1024 == metrics["frac_zero_active"]
        assert (run / "config_resolved.yaml").is_file()
        assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # one file, written once an epoch
        assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
    weights = [torch.load(r / "checkpoints" / "last.ckpt")["state_dict"]["linear.weight"] for r in runs]
    assert not torch.equal(weights[0], weights[3])  # the loss override reached the model


def test_ablation_analysis_writes_figure_and_table(ablation_dir):
    result = run_cli("-m", "analysis.ablation", f"dir={ablation_dir}")
    out = ablation_dir / "analysis"
    assert (out / "figure2_ablation.pdf").stat().st_size > 0 and (out / "figure2_ablation.png").stat().st_size > 0
    table = (out / "ablation.md").read_text()
    for name in ("A: lse", "B: lse+var", "C: lse+var+tc", "D: var+tc"):  # the README's labels, n = 1 seed
        assert f"| {name} | 1 |" in table
    assert "redundancy_norm" in result.stdout


def test_mnist_run_logs_to_wandb_offline_with_figures_and_says_only_what_matters(tmp_path):
    launched = time.time()
    result = run_cli("train.py", "trainer.max_epochs=2", "trainer.limit_train_batches=5", "model.hidden_dim=8",
                     "trainer.log_every_n_steps=2", "callbacks.unit_metrics.formats=[pdf,png]",
                     f"hydra.run.dir={tmp_path}")
    for name in ("abs_corr", "weight_cosine", "firing_frequency"):
        assert (tmp_path / "figures" / f"{name}.png").is_file() and (tmp_path / "figures" / f"{name}.pdf").is_file()
    metrics = read_metrics(tmp_path)
    assert metrics["params"] == 784 * 8 + 8 and metrics["epoch"] == 2 and metrics["global_step"] == 10
    run, config, history = wandb_run(tmp_path)
    assert run.run_group == str(tmp_path) and run.display_name  # a single run is its own group
    assert "model" in config and "hidden_dim" not in config  # the hyperparameters once, under their group
    assert history["epoch"] == 2 and history["trainer/global_step"] == 10
    # train and val terms on the same per-example scale; the optimised sum over the batch beside them
    assert abs(history["train/total"] - history["val/total"]) < 0.5 * abs(history["val/total"])
    assert history["train/objective"] != history["train/total"]
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines[0] == f"run folder: {tmp_path}" and lines[-4].startswith("finished in ")
    assert lines[-3].startswith(f"files in {tmp_path}: checkpoints/, config_resolved.yaml, figures/, history.jsonl, metrics.json")
    assert lines[-2].startswith(f"W&B, offline: wandb sync {tmp_path / 'wandb' / 'offline-run-'}")
    assert lines[-1].startswith("time 0:") and "training steps" in lines[-1] and "start up" in lines[-1]
    assert sum(line.startswith("epoch ") for line in lines) == 2 and len(lines) <= 10
    assert "end of fit: reconstruction, affine read-out and probes on test ..." in lines
    # the phases add up to the run's wall time, which starts at the process's start (imports included): from
    # this launch to the log's last line, written when the time was taken. psutil dates the process from the
    # boot time, in whole seconds; counted from the job's start instead, the total would miss the imports
    seconds = read_metrics(tmp_path)["time"]
    assert sum(seconds[name] for name in PHASES) == pytest.approx(seconds["total"], abs=0.01)
    log = (tmp_path / "train.log").read_text()
    logged = datetime.strptime(log.splitlines()[-1][1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert seconds["total"] == pytest.approx(logged - launched, abs=1.5)
    assert min(seconds.values()) >= 0 and "finished in " in log
    assert seconds["training_steps"] > 0 and seconds["checkpoints"] > 0 and seconds["end_of_fit"] > 0


def test_start_up_counts_from_the_interpreter_not_from_a_shell_that_execs_it(tmp_path):
    """bash -c "sleep 5; exec python train.py" keeps bash's process start: 5 s that are not the run's."""
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    launched = time.time()
    subprocess.run(["bash", "-c", f"sleep 5 && exec {sys.executable} {ROOT / 'train.py'} {' '.join(QUICK)} "
                                  f"hydra.run.dir={tmp_path}"], env=env, check=True, capture_output=True, timeout=300)
    seconds = read_metrics(tmp_path)["time"]
    logged = datetime.strptime((tmp_path / "train.log").read_text().splitlines()[-1][1:24],
                               "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert seconds["total"] == pytest.approx(logged - launched - 5, abs=1.5)


def test_progress_outside_a_terminal_is_a_plain_line_every_so_often(tmp_path):
    result = run_cli("train.py", *QUICK, "callbacks.progress.every_s=0", "trainer.limit_train_batches=3",
                     f"hydra.run.dir={tmp_path}")
    steps = [line for line in result.stdout.splitlines() if line.startswith("epoch 1/1, step ")]
    assert [line.split(",")[1] for line in steps] == [" step 1/3 (33%)", " step 2/3 (67%)", " step 3/3 (100%)"]
    assert steps[0] in (tmp_path / "train.log").read_text() and "\r" not in result.stdout + result.stderr


def test_theorem_command_prints_exact_agreement(tmp_path):
    result = run_cli("-m", "analysis.theorem", "data=gaussian_mixture", f"hydra.run.dir={tmp_path}")
    assert result.stdout.startswith("a randomly initialised encoder (seed 0): 512 validation examples x 64 units")
    max_error = float(result.stdout.split("max |dL/da - r| = ")[1].split(",")[0])
    assert max_error < 1e-14
    assert (tmp_path / "theorem.pdf").is_file() and (tmp_path / "theorem.png").is_file()


@pytest.mark.parametrize("override, message", [
    ("model.hidden_dim=0", "hidden_dim must be > 0"),
    ("model.lr=0", "lr must be > 0"),
    ("data.batch_size=0", "batch_size must be > 0"),
    ("loss.weights.lse=-1", "weights must be >= 0"),
    ("model.activation=tanh", "unknown model.activation 'tanh'"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 trains nothing"),
    ("trainer.max_epochs=-1", "trainer.max_epochs=-1 (no limit) trains forever without trainer.max_steps"),
    ("trainer.max_epochs=abc", "trainer.max_epochs=abc is not an int"),
    ("model.hidden_dim=abc", "model.hidden_dim=abc is not an int"),
    ("model.hidden_dim=1.5", "model.hidden_dim=1.5 is not an int"),
    ("model.lr=nan", "model.lr=nan is not a finite number"),
    ("data.noise=nan", "data.noise=nan is not a finite number"),
    ("model.lr=???", "model.lr=??? has no value"),
    ("seed=-1", "seed=-1 must be an int in [0, 2**32 - 1]"),
    ("checkpoint.every_n_steps=0", "checkpoint.every_n_steps=0 must be an int > 0"),
    ("calibrate.target_l0=abc", "calibrate.target_l0=abc is not a number"),
    ("trainer=ddp", "torch sees no CUDA GPU here: add trainer.accelerator=cpu"),
    ("+trainer.precision=16-mixed", "trainer.precision=16-mixed is float16, which needs a GPU: on CPU use bf16-mixed"),
    (f"torch_threads={len(os.sched_getaffinity(0)) + 1}", "is above this machine's"),
    ("model.hidden_dim=200000000", "the model "),  # 200M x 32 inputs: 26 GB of weights, or 4x that to train
    ("model.activation=relü", "Hydra cannot read non-ASCII text unquoted; quote the value: model.activation='relü'"),
    ("model.activation='relü'", "unknown model.activation 'relü'"),  # quoted, it reaches the config check
])
def test_impossible_values_fail_in_one_line_before_training(tmp_path, override, message):
    result = run_cli("train.py", *QUICK, override, f"hydra.run.dir={tmp_path / 'run'}", check=False,
                     env={"CUDA_VISIBLE_DEVICES": ""})  # trainer=ddp: as on a machine without GPUs
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()  # no empty run folder left


def test_unknown_group_option_lists_the_options():
    result = run_cli("train.py", "loss=lse_typo", check=False)
    assert result.returncode != 0
    assert "Could not find 'loss/lse_typo'" in result.stderr and "lse_var_tc" in result.stderr


def test_missing_mnist_names_the_path_and_leaves_no_outputs(tmp_path):
    result = run_cli("train.py", f"data.data_dir={tmp_path}", check=False, cwd=tmp_path)
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: MNIST file missing: {tmp_path}/")
    assert list(tmp_path.iterdir()) == []


def test_a_run_resumed_from_a_checkpoint_continues_in_its_run_folder(tmp_path):
    first = tmp_path / "first"
    run_cli("train.py", *QUICK, "callbacks.final_evaluation.probe=false", f"hydra.run.dir={first}")
    steps_per_epoch = read_metrics(first)["global_step"]
    run_cli("train.py", *QUICK, "callbacks.final_evaluation.probe=false", "trainer.max_epochs=2",
            f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", cwd=tmp_path)
    metrics = read_metrics(first)
    assert metrics["global_step"] == 2 * steps_per_epoch and metrics["epoch"] == 2
    assert metrics["status"] == "finished" and not (tmp_path / "outputs").exists()


def test_the_default_logger_needs_no_wandb_settings_in_the_environment(tmp_path):
    """As a fresh machine runs it: no WANDB_MODE, no API key; the logger's offline: true is enough."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("WANDB_")}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *QUICK, "logger=wandb", f"hydra.run.dir={tmp_path}"],
                            cwd=tmp_path, env=env | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_metrics(tmp_path)["status"] == "finished" and list((tmp_path / "wandb").glob("offline-run-*"))
    assert "wandb: WARNING" not in result.stdout + result.stderr


def test_logger_none_trains_without_a_logger(tmp_path):
    run_cli("train.py", *QUICK, "logger=none", f"hydra.run.dir={tmp_path}")
    assert read_metrics(tmp_path)["status"] == "finished"
    assert not (tmp_path / "csv").exists() and not (tmp_path / "wandb").exists()


def test_the_peak_memory_is_the_run_s_own_not_its_launcher_s(tmp_path):
    """A launcher that holds 2 GiB (a test runner, a notebook) starts train.py: the run reports its own peak
    (Linux keeps a parent's in getrusage's ru_maxrss across fork and exec)."""
    command = [sys.executable, str(ROOT / "train.py"), *QUICK, "logger=none", f"hydra.run.dir={tmp_path}"]
    run_cli("-c", f"import subprocess, numpy; held = numpy.ones(2**28); subprocess.run({command!r}, check=True)")
    assert 0.1 < read_metrics(tmp_path)["peak_rss_gb"] < 1.5


def test_nothing_is_profiled_unless_asked_and_simple_reports_in_the_log(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert compose("train").trainer.profiler is None
    result = run_cli("train.py", *QUICK, "logger=none", "trainer.limit_train_batches=2", "trainer.profiler=simple",
                     f"hydra.run.dir={tmp_path}")
    log = (tmp_path / "train.log").read_text()
    assert "FIT Profiler Report" in result.stdout and "FIT Profiler Report" in log
    assert "[Callback]Stopwatch.on_train_batch_start" in log and "[Strategy]SingleDeviceStrategy.training_step" in log


def test_every_model_trains_through_train_py_and_logs_its_terms_and_l0(tmp_path):
    models = sorted(path.stem for path in (ROOT / "conf" / "model").glob("*.yaml") if path.stem != "classifier")
    run_cli("train.py", "-m", f"model={','.join(models)}", *QUICK, "logger=none", "trainer.limit_train_batches=2",
            "trainer.log_every_n_steps=2", "callbacks.final_evaluation.probe=false", f"hydra.sweep.dir={tmp_path}")
    for job, model in enumerate(models):
        metrics = read_metrics(tmp_path / str(job))
        assert metrics["status"] == "finished", model
        assert {"train/total", "train/l0", "val/total", "l0"} <= set(metrics), model
