import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from wandb.proto.wandb_internal_pb2 import Record

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["data=gaussian_mixture", "trainer.max_epochs=1", "logger=csv", "callbacks.unit_metrics.figures=false"]
WORKING_DIR = Path(tempfile.mkdtemp(prefix="encoder-study-tests-"))  # default outputs/ land here, not in the checkout


def run_cli(*args: str, check: bool = True, cwd: Path = WORKING_DIR,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a project command (``train.py ...`` or ``-m analysis.x ...``) as a user would, from ``cwd``,
    with ``env`` added to the environment."""
    # one intra-op thread: these models are tiny, and a second thread only waits on a busy machine
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1",
               **(env or {}))
    if args[0].endswith(".py"):
        args = (str(ROOT / args[0]), *args[1:])
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"{args} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def measured(run_dir: Path) -> dict:
    """What a run measured: metrics.json without how it ran (its wall-clock ``time`` and ``peak_rss_gb``), which
    no two runs share."""
    return {name: value for name, value in read_metrics(run_dir).items() if name not in ("time", "peak_rss_gb")}


def wandb_run(run_dir: Path) -> tuple[object, dict, dict]:
    """The run record, config and last logged value of each metric of the run folder's offline W&B run,
    read from its transaction log (LevelDB's log format: 32 KiB blocks of records with 7-byte headers)."""
    path = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    data, block, position, chunks = path.read_bytes(), 32768, 7, []  # after the file's own 7-byte header
    run, config, history = None, {}, {}
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunks.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
            items = {"run": record.run.config.update, "config": record.config.update,
                     "history": record.history.item}.get(kind, [])
            target = history if kind == "history" else config
            target.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return run, config, history
