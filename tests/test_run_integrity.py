"""Nothing lost, nothing claimed: runs killed at the moments that used to lose read-outs finish them when
run again, a finished run is never rewritten, checkpoints are whole or absent, and a resume that would damage
a run is one line. Through the real train.py, with kill -9 (tests/kill_at.py), tmpfs mounts for a full and
a read-only disk, and damaged bytes."""
import shutil
import subprocess
from contextlib import contextmanager

import pytest

from runtime.calibration import advice
from conftest import QUICK, ROOT, measured, read_metrics, run_cli

ARGS = [*(arg for arg in QUICK if not arg.startswith("logger=")), "logger=none", "model.hidden_dim=16"]
KILL = ["+callbacks.kill._target_=kill_at.KillAt"]
TESTS_ON_PATH = {"PYTHONPATH": str(ROOT / "tests")}  # kill_at.py


def files_of(folder):
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("unbroken")
    run_cli("train.py", *ARGS, f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.parametrize("hook", ["on_train_end", "on_fit_end"])
def test_a_run_killed_during_its_read_outs_finishes_them_when_run_again(unbroken, tmp_path, hook):
    killed = run_cli("train.py", *ARGS, *KILL, f"+callbacks.kill.hook={hook}", f"hydra.run.dir={tmp_path}",
                     env=TESTS_ON_PATH, check=False)
    assert killed.returncode == -9 and read_metrics(tmp_path)["status"] != "finished"
    run_cli("train.py", *ARGS, f"hydra.run.dir={tmp_path}")
    assert measured(tmp_path) == measured(unbroken)  # fvu, probes, unit statistics: every read-out, once
    assert "time" in read_metrics(tmp_path)
    again = run_cli("train.py", *ARGS, f"hydra.run.dir={tmp_path}")
    assert "already finished" in again.stdout


@pytest.mark.parametrize("signal_name, hook", [("TERM", "on_train_batch_end"), ("TERM", "on_train_end"),
                                               ("INT", "on_train_batch_end"), ("INT", "on_validation_end")])
def test_a_signal_says_interrupted_and_the_same_command_ends_as_an_unbroken_run(unbroken, tmp_path, signal_name,
                                                                               hook):
    stopped = run_cli("train.py", *ARGS, *KILL, f"+callbacks.kill.hook={hook}", "+callbacks.kill.step=3",
                      f"+callbacks.kill.signal={signal_name}", f"hydra.run.dir={tmp_path}", env=TESTS_ON_PATH,
                      check=False)
    assert stopped.returncode != 0 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert read_metrics(tmp_path)["status"] == "interrupted"
    if signal_name == "TERM":
        assert stopped.returncode == 143 and "interrupted by SIGTERM at step " in stopped.stdout + stopped.stderr
    run_cli("train.py", *ARGS, f"hydra.run.dir={tmp_path}")
    assert measured(tmp_path) == measured(unbroken)
    # on_validation_end: after the last validation's line, before its checkpoint: the line is not written twice
    assert (tmp_path / "history.jsonl").read_text() == (unbroken / "history.jsonl").read_text()


def test_a_run_killed_with_sigkill_is_told_from_a_live_one(tmp_path):
    killed = run_cli("train.py", *ARGS, "trainer.max_epochs=2", *KILL, "+callbacks.kill.hook=on_train_epoch_start",
                     "+callbacks.kill.step=1", f"hydra.run.dir={tmp_path / 'run'}", env=TESTS_ON_PATH, check=False)
    assert killed.returncode == -9
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "running" and metrics["process"]["pid"] > 0
    result = run_cli("-m", "analysis.time", f"dir={tmp_path}", check=False)
    assert f"skipped {tmp_path / 'run'}: status running (epoch 1), but its process (pid {metrics['process']['pid']} " \
           f"on " in result.stderr and "is gone: it was killed" in result.stderr, result.stderr[-2000:]


def test_a_classifier_killed_in_its_test_is_not_finished_and_tests_when_run_again(tmp_path):
    args = ["experiment=classifier", "model.hidden_dim=32", "trainer.max_epochs=1", "trainer.limit_train_batches=100",
            "logger=none"]
    killed = run_cli("train.py", *args, *KILL, "+callbacks.kill.hook=on_test_start", f"hydra.run.dir={tmp_path}",
                     env=TESTS_ON_PATH, check=False)
    assert killed.returncode == -9 and read_metrics(tmp_path)["status"] == "trained"
    run_cli("train.py", *args, f"hydra.run.dir={tmp_path}")
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "finished" and metrics["test/acc"] > 0.5


def test_a_resume_never_rewrites_a_finished_run(unbroken, tmp_path):
    before = files_of(unbroken)
    ckpt = f"ckpt_path={unbroken / 'checkpoints' / 'last.ckpt'}"
    other = run_cli("train.py", *ARGS, "model.hidden_dim=32", "trainer.max_epochs=2", ckpt,
                    check=False, cwd=tmp_path)
    assert other.returncode != 0 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: {unbroken / 'checkpoints' / 'last.ckpt'} was trained with another configuration: "
        f"model.hidden_dim=32 (the run's: 16); resume it with the run's own configuration, or start a new run "
        f"without ckpt_path")
    same = run_cli("train.py", *ARGS, ckpt, cwd=tmp_path)
    assert "already finished" in same.stdout
    after = files_of(unbroken)
    assert {path: data for path, data in after.items() if path.name != "train.log"} == \
           {path: data for path, data in before.items() if path.name != "train.log"}
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_model_is_one_line_and_the_finished_run_is_untouched(unbroken, tmp_path):
    run_cli("train.py", *ARGS, "model=sae", f"hydra.run.dir={tmp_path / 'sae'}")
    foreign = unbroken / "checkpoints" / "sae.ckpt"
    foreign.write_bytes((tmp_path / "sae" / "checkpoints" / "last.ckpt").read_bytes())
    try:
        before = files_of(unbroken)
        result = run_cli("train.py", *ARGS, "trainer.max_epochs=9", f"ckpt_path={foreign}", check=False, cwd=tmp_path)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: checkpoint {foreign} holds another model than this config builds: it "), line
        after = files_of(unbroken)  # metrics.json, history, checkpoints: not a byte rewritten (the log says why)
        assert {p: data for p, data in after.items() if p.name != "train.log"} == \
               {p: data for p, data in before.items() if p.name != "train.log"}
    finally:
        foreign.unlink()


def test_a_damaged_metrics_file_is_one_line_on_rerun_and_deleting_it_finishes_the_run_again(unbroken, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(unbroken, run)
    (run / "metrics.json").write_text('{"status": "fin')
    result = run_cli("train.py", *ARGS, f"hydra.run.dir={run}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {run / 'metrics.json'} is not JSON (")
    (run / "metrics.json").unlink()
    run_cli("train.py", *ARGS, f"hydra.run.dir={run}")
    assert measured(run) == measured(unbroken)


def test_ckpt_path_to_a_file_that_is_not_a_runs_checkpoint_writes_nothing_anywhere(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "weights.ckpt").write_text("not a checkpoint")
    result = run_cli("train.py", *ARGS, f"ckpt_path={tmp_path / 'notes' / 'weights.ckpt'}", check=False,
                     cwd=tmp_path)
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: ckpt_path={tmp_path / 'notes' / 'weights.ckpt'} is not a run's checkpoint")
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["notes", "weights.ckpt"]


def test_a_damaged_last_checkpoint_is_one_line_that_names_it(tmp_path):
    run_cli("train.py", *ARGS, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}", *KILL,
            "+callbacks.kill.hook=on_train_epoch_start", "+callbacks.kill.step=1", env=TESTS_ON_PATH, check=False)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    result = run_cli("train.py", *ARGS, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint {last} is truncated or corrupt (") and "delete it" in line


@contextmanager
def tmpfs(path, size: str):
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_keeps_checkpoints_whole_and_the_run_resumes_with_room(tmp_path):
    """At 4096 latents a checkpoint (weights, Adam's moments, the initial weights for the probe) is about
    2.5 MB, more than the 1 MB disk holds after the run's small files."""
    args = [*ARGS, "model.hidden_dim=4096", "data.n_train=2048"]
    with tmpfs(tmp_path / "disk", "1m") as disk:
        result = run_cli("train.py", *args, f"hydra.run.dir={disk / 'run'}", check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: cannot write checkpoint {disk / 'run' / 'checkpoints' / 'last.ckpt'} (")
        assert "with 0.0 MiB free on its disk" in line
        assert not (disk / "run" / "checkpoints" / "last.ckpt").exists()  # absent, not truncated
        assert read_metrics(disk / "run")["status"] == "failed"
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        run_cli("train.py", *args, f"hydra.run.dir={disk / 'run'}")
        assert read_metrics(disk / "run")["status"] == "finished"


def test_a_read_only_run_folder_is_one_line_before_anything(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for args in ([*ARGS, f"hydra.run.dir={disk / 'run'}"], ["-m", *ARGS, f"hydra.sweep.dir={disk / 'sweep'}"]):
            result = run_cli("train.py", *args, check=False)
            assert result.returncode != 0 and "Traceback" not in result.stderr
            assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot write to {disk} (read-only)")


def test_a_diverging_run_fails_in_one_line_with_status_failed(tmp_path):
    result = run_cli("train.py", *ARGS, "model.lr=1e30", f"hydra.run.dir={tmp_path}", check=False)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and line.startswith("error: non-finite loss at step ") and "term(s) [" in line
    assert "checkpoints" not in line  # none was written before the loss diverged
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "failed" and metrics["error"].startswith("non-finite loss at step ")


@pytest.mark.parametrize("points, expected", [
    ([(1e-4, 26.2), (1e-2, 21.0), (10.0, 17.5)], "L0 barely follows lambda (26.2 at 0.0001 -> 17.5 at 10)"),
    ([(1e-4, 300.0), (1e-2, 120.0), (10.0, 40.0)], "raise calibrate.lambda_max"),
    ([(1e-4, 3.0), (1e-2, 1.0), (10.0, 0.2)], "lower calibrate.lambda_min"),
    ([(1e-4, 20.0), (1e-2, 13.0), (10.0, 5.0)], "raise calibrate.refine_steps"),
])
def test_calibration_says_what_would_reach_the_target(points, expected):
    assert expected in advice(points, target=10, epochs=1)
