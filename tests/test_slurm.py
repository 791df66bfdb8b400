"""Sweeps on a real SLURM (scripts/slurm_cluster.sh up): a job array through hydra/launcher=slurm, a failing
job reported, and jobs requeued mid-training (scontrol requeue, or the pre-timeout USR2) that resume in their
run folder and end bit for bit as an unbroken run."""
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from conftest import QUICK, ROOT, measured, read_metrics, run_cli
from test_ddp import COMMON, DOUBLED_BATCH, HALF_BATCH, assert_same_training

LAUNCH = ["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
          "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10"]
LONG = ["data=gaussian_mixture", "data.n_train=16384", "trainer.max_epochs=6", "logger=wandb", "torch_threads=1",
        "callbacks.unit_metrics.figures=false", "checkpoint.every_n_steps=20"]


@pytest.fixture(scope="module", autouse=True)
def slurm():
    if subprocess.run(["bash", ROOT / "scripts" / "slurm_cluster.sh", "status"]).returncode != 0:
        message = "no SLURM cluster answers: `bash scripts/slurm_cluster.sh up` (root, Debian) starts one"
        if os.environ.get("CI"):
            pytest.fail(message)  # .ci/run brings one up: its absence there is a failure
        pytest.skip(message)


def test_the_ablation_runs_as_a_slurm_job_array(tmp_path):
    run_cli("train.py", *LAUNCH, *QUICK, "loss=lse,lse_var,lse_var_tc,var_tc", f"hydra.sweep.dir={tmp_path}")
    assert [read_metrics(tmp_path / str(job))["status"] for job in range(4)] == ["finished"] * 4
    array = {path.name.split("_")[0] for path in (tmp_path / ".submitit").glob("[0-9]*_*")}
    assert len(array) == 1  # one array, four tasks
    assert final_states(array.pop()) == ["COMPLETED"] * 4


def launch(sweep, *overrides) -> subprocess.Popen:
    """A sweep through the SLURM launcher, in the background (the launcher waits for its jobs)."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    return subprocess.Popen([sys.executable, "train.py", *LAUNCH, *overrides, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def submitted_job(sweep) -> str:
    """The id of a sweep's job (of its first task, for an array), from submitit's folder."""
    return next(path.name for path in (sweep / ".submitit").glob("[0-9]*"))


def final_states(job, timeout_s=60):
    """sacct's states once every task has ended: submitit collects a task's result as soon as the task writes it,
    a moment before SLURM records the task's end."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], capture_output=True, text=True,
                                check=True).stdout.split()
        if not {"PENDING", "RUNNING", "COMPLETING"} & set(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def test_a_failing_slurm_job_keeps_the_other_three_and_is_reported(tmp_path):
    result = run_cli("train.py", *LAUNCH, *QUICK, "model.hidden_dim=8,-1,4,6", f"hydra.sweep.dir={tmp_path}",
                     check=False)
    assert result.returncode != 0
    assert [read_metrics(tmp_path / job)["status"] for job in ("0", "2", "3")] == ["finished"] * 3
    assert result.stderr.strip().splitlines()[-2:] == [
        f"failed: {tmp_path / '1'}: error: model.hidden_dim must be > 0, got -1",
        "error: 1 of 4 jobs failed (their lines above); the others finished"]


def test_an_unknown_partition_fails_in_one_line_before_submitting(tmp_path):
    result = run_cli("train.py", *LAUNCH, *QUICK, "hydra.launcher.partition=gpu-a100", f"hydra.sweep.dir={tmp_path}",
                     check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: unknown partition 'gpu-a100'; the cluster has ['debug']"
    assert not (tmp_path / ".submitit").exists()


@pytest.mark.parametrize("request_, problem", [
    (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=9"],
     r"9 nodes requested \(trainer.num_nodes\), but partition debug has \d"),
    (["hydra.launcher.mem_gb=100000"], r"hydra.launcher.mem_gb=100000 per node, but the nodes of partition debug have "
                                       r"[\d.]+ GB")], ids=["nodes", "memory"])
def test_more_than_the_cluster_has_fails_in_one_line_before_submitting(tmp_path, request_, problem):
    result = run_cli("train.py", *LAUNCH, *QUICK, *request_, f"hydra.sweep.dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert re.fullmatch(f"error: {problem}", result.stderr.strip().splitlines()[-1])
    assert not (tmp_path / ".submitit").exists()


@pytest.mark.parametrize("interrupt", [["scontrol", "requeue"], ["scancel", "--signal=USR2"]],
                         ids=["scontrol-requeue", "usr2-before-time-limit"])
def test_a_job_requeued_mid_training_resumes_and_ends_as_if_unbroken(tmp_path, interrupt):
    run_cli("train.py", *LONG, f"hydra.run.dir={tmp_path / 'unbroken'}")
    sweep = tmp_path / "sweep"
    process = launch(sweep, *LONG)
    while not (sweep / "0" / "checkpoints" / "last.ckpt").exists() and process.poll() is None:
        time.sleep(0.005)
    job = submitted_job(sweep)
    subprocess.run([*interrupt, job], check=True)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-2000:]

    run = sweep / "0"
    restarts = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts
    assert f"resuming from {run / 'checkpoints' / 'last.ckpt'}" in (run / "train.log").read_text()
    assert measured(run) == measured(tmp_path / "unbroken")
    expected = torch.load(tmp_path / "unbroken" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(value, expected[name]) for name, value in resumed.items())
    assert len({path.name.rsplit("-", 1)[1] for path in (run / "wandb").glob("offline-run-*")}) == 1


def test_ddp_under_slurm_runs_one_task_per_device_and_trains_as_one_process(tmp_path):
    run_cli("train.py", *LAUNCH, *COMMON, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *HALF_BATCH,
            f"hydra.sweep.dir={tmp_path / 'ddp'}")
    assert len(list((tmp_path / "ddp" / ".submitit").glob("*/*_1_log.out"))) == 1  # srun started a second task
    run_cli("train.py", *COMMON, *DOUBLED_BATCH, f"hydra.run.dir={tmp_path / 'one'}")
    assert_same_training(tmp_path / "ddp" / "0", tmp_path / "one")
