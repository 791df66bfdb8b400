"""Sweeps whose jobs fail: the others finish, and the sweep ends with one line per failed job; the SLURM
launcher follows every task of an array."""
import pytest

from conftest import QUICK, read_metrics, run_cli
from hydra_plugins.encoder_study_launchers.slurm_jobs import task_ids


@pytest.mark.parametrize("launcher", ["sequential", "local"])
def test_a_failed_job_keeps_the_others_and_is_reported_in_one_line(tmp_path, launcher):
    result = run_cli("train.py", "-m", f"hydra/launcher={launcher}", *QUICK, "model.hidden_dim=8,-1,4",
                     f"hydra.sweep.dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert [read_metrics(tmp_path / job)["status"] for job in ("0", "2")] == ["finished", "finished"]
    lines = result.stderr.strip().splitlines()
    assert lines[-2:] == [f"failed: {tmp_path / '1'}: error: model.hidden_dim must be > 0, got -1",
                          "error: 1 of 3 jobs failed (their lines above); the others finished"]


def test_a_diverged_job_of_a_sweep_is_a_failed_job(tmp_path):
    result = run_cli("train.py", "-m", "model=sae", "model.lr=1e30,1e-3", "model.hidden_dim=16", *QUICK,
                     f"hydra.sweep.dir={tmp_path}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert read_metrics(tmp_path / "0")["status"] == "failed" and read_metrics(tmp_path / "1")["status"] == "finished"
    lines = result.stderr.strip().splitlines()
    assert lines[-2].startswith(f"failed: {tmp_path / '0'}: error: non-finite loss at step "), lines[-3:]
    assert lines[-1] == "error: 1 of 2 jobs failed (their lines above); the others finished"


def test_a_slurm_request_that_cannot_match_the_trainer_fails_before_submitting(tmp_path):
    result = run_cli("train.py", "-m", "hydra/launcher=slurm", *QUICK, "loss=lse,lse_var",
                     "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path}", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == ("error: hydra.launcher.tasks_per_node=2 but trainer.devices=1: "
                                                      "Lightning under SLURM runs one task per device")
    assert not (tmp_path / ".submitit").exists()


def test_the_tasks_of_an_array_that_scontrol_shows_together_are_each_watched():
    assert task_ids("0-3,7") == ["0", "1", "2", "3", "7"] and task_ids("5") == ["5"]
    assert task_ids("2-4%2") == ["2", "3", "4"]  # %2: at most two at once
