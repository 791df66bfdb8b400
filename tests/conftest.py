import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["data=gaussian_mixture", "trainer.max_epochs=1", "logger=csv", "callbacks.unit_metrics.figures=false"]


def run_cli(*args: str, check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run a project command (``train.py ...`` or ``-m analysis.x ...``) as a user would, from ``cwd``."""
    # one intra-op thread: these models are tiny, and a second thread only waits on a busy machine
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")
    if args[0].endswith(".py"):
        args = (str(ROOT / args[0]), *args[1:])
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"{args} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
