"""Wall time of the 4-configuration ablation sweep run by the sequential launcher (one job after another,
torch's default threads) against the local launcher (all four at once, one thread each), side by side.

    python -m benchmarks.parallel_sweep

parallel_vs_sequential   sequential wall time / parallel wall time (higher is better: 2.0 = twice as fast)

The sweep is the README's main job as it is (10 epochs each). Launchers alternate, round by round; the ratio is the
median over rounds. The last line is JSON.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["train.py", "-m", "loss=lse,lse_var,lse_var_tc,var_tc", "logger=csv",
         "callbacks.unit_metrics.figures=false"]
ROUNDS = 2


def wall_seconds(launcher: str, sweep_dir: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *SWEEP, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}"],
                   cwd=ROOT, env=dict(os.environ, WANDB_MODE="offline"), check=True, capture_output=True)
    seconds = time.perf_counter() - start
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 4, f"{launcher}: not every job finished"
    return seconds


def main() -> None:
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(ROUNDS):
            sequential = wall_seconds("sequential", Path(tmp) / f"sequential{round_}")
            parallel = wall_seconds("local", Path(tmp) / f"local{round_}")
            ratios.append(sequential / parallel)
            print(f"round {round_}: sequential {sequential:.1f} s, local {parallel:.1f} s, "
                  f"ratio {ratios[-1]:.2f} on {os.cpu_count()} cores")
    print(json.dumps({"parallel_vs_sequential": round(statistics.median(ratios), 3)}))


if __name__ == "__main__":
    main()
