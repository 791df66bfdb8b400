"""Sweeps whose jobs fail: the others finish, and the sweep ends with one line per failed job; the SLURM
launcher follows every task of an array, and says why a requeued job's run ended once sacct knows."""
import logging

import pytest

from conftest import QUICK, read_metrics, run_cli
from hydra_plugins.encoder_study_launchers import slurm_jobs
from hydra_plugins.encoder_study_launchers.slurm_jobs import JobView, task_ids
from runtime.files import write_json


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


def test_a_requeued_job_s_folder_says_how_its_run_ended_once_sacct_records_it(tmp_path, monkeypatch):
    """slurmdbd records a run's end some seconds after slurmctld requeues the job: until then the folder says
    what slurmctld showed (the node), then sacct's state."""
    write_json(tmp_path / "metrics.json", {"status": "running", "process": {"pid": 1}})
    polls = [  # (scontrol's view, sacct's runs) at each poll
        (JobView("RUNNING", 0, "es-node1"), [("RUNNING", "es-node1")]),
        (JobView("PENDING", 1, ""), [("RUNNING", "es-node1")]),  # requeued; sacct still on the run
        (JobView("PENDING", 1, ""), [("NODE_FAIL", "es-node1"), ("PENDING", "None assigned")]),
        (JobView("COMPLETED", 1, "es-node2"), [("NODE_FAIL", "es-node1"), ("COMPLETED", "es-node2")])]
    said = []

    def next_poll(job_ids):
        said.append(read_metrics(tmp_path).get("interrupted"))
        view, runs = polls[len(said) - 1]
        monkeypatch.setattr(slurm_jobs, "sacct_runs", lambda job_id: runs)
        return {"7": view}

    monkeypatch.setattr(slurm_jobs, "scontrol_views", next_poll)
    slurm_jobs.watch(["7"], [tmp_path], logging.getLogger("test"), poll_s=0)
    resumes = "requeued (restart 1): it resumes from its last checkpoint"
    assert said[1:] == [None, f"job 7 ended its run on es-node1; {resumes}",
                        f"job 7 ended NODE_FAIL on es-node1; {resumes}"]
    assert read_metrics(tmp_path)["status"] == "interrupted" and "process" not in read_metrics(tmp_path)
