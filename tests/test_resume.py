"""Exact resume: a run killed with SIGKILL mid-epoch and started again ends where an unbroken run ends."""
import os
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT, measured, run_cli

STEPS_PER_EPOCH = 128  # 16384 examples / batch 128
ARGS = ["train.py", "data=gaussian_mixture", "data.n_train=16384", "trainer.max_epochs=2", "logger=csv",
        "callbacks.unit_metrics.figures=false", "checkpoint.every_n_steps=20"]


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(tmp_path):
    unbroken, killed = tmp_path / "unbroken", tmp_path / "killed"
    run_cli(*ARGS, f"hydra.run.dir={unbroken}")

    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, *ARGS, f"hydra.run.dir={killed}"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoints" / "last.ckpt"
    while not checkpoint.exists() and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = torch.load(checkpoint, weights_only=True)["global_step"]
    assert 0 < step < 2 * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH != 0  # died mid-epoch, mid-run

    resumed = run_cli(*ARGS, f"hydra.run.dir={killed}")  # the same command again
    assert f"resuming from {checkpoint}" in resumed.stderr + resumed.stdout
    assert measured(killed) == measured(unbroken)
    expected = weights(unbroken)
    assert all(torch.equal(value, expected[name]) for name, value in weights(killed).items())

    again = run_cli(*ARGS, f"hydra.run.dir={killed}")
    assert "already finished" in again.stderr + again.stdout


def test_a_job_signalled_before_its_time_limit_checkpoints_requeues_and_ends_as_if_unbroken(tmp_path):
    """The local launcher's jobs take submitit's USR2 handler as SLURM jobs do; requeued, the job resumes
    in its run folder, with its W&B run."""
    overrides = ARGS[1:] + ["trainer.max_epochs=6", "torch_threads=1", "logger=wandb"]
    run_cli("train.py", *overrides, f"hydra.run.dir={tmp_path / 'unbroken'}")
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1")
    sweep = tmp_path / "sweep"
    process = subprocess.Popen([sys.executable, "train.py", "-m", "hydra/launcher=local", *overrides,
                                f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    while not (sweep / "0" / "checkpoints" / "last.ckpt").exists() and process.poll() is None:
        time.sleep(0.005)
    subprocess.run(["pkill", "-USR2", "-f", f"submitit.core._submit {sweep}"], check=True)
    assert process.wait(timeout=300) == 0

    log = (sweep / "0" / "train.log").read_text()
    assert "SIGUSR2 received" in log and f"resuming from {sweep / '0' / 'checkpoints' / 'last.ckpt'}" in log
    assert measured(sweep / "0") == measured(tmp_path / "unbroken")
    expected = weights(tmp_path / "unbroken")
    assert all(torch.equal(value, expected[name]) for name, value in weights(sweep / "0").items())
    runs = {path.name.rsplit("-", 1)[1] for path in (sweep / "0" / "wandb").glob("offline-run-*")}
    assert len(list((sweep / "0" / "wandb").glob("offline-run-*"))) == 2 and len(runs) == 1  # one run, resumed
