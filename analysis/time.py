"""Where a sweep's wall time went: every finished run's phases (metrics.json's ``time``, written by
callbacks/stopwatch.py through train.py) as a stacked bar per run and a Markdown table, with the sweep's
shares. Runs of one process ran one after the other, so their totals add up to the sweep's time; only
the first job of a process pays the imports in its start-up.

    python -m analysis.time dir=multirun/<date>/<time>
"""
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig

from analysis.runs import load_runs
from callbacks.stopwatch import PHASES, share_line
from evaluation.plots import publish


def table(names: list[str], rows: list[dict]) -> str:
    header = "| run | total s | " + " | ".join(f"{phase} s" for phase in PHASES) + " |"
    lines = [header, "|---" * (len(PHASES) + 2) + "|"]
    for name, seconds in zip(names, rows):
        lines.append(f"| {name} | {seconds['total']:.1f} | " + " | ".join(f"{seconds[p]:.1f}" for p in PHASES) + " |")
    return "\n".join(lines) + "\n"


def figure(names: list[str], rows: list[dict], title: str):
    fig, ax = plt.subplots(figsize=(8.5, 0.3 * len(rows) + 1.4))
    left = np.zeros(len(rows))
    for phase in PHASES:
        widths = np.array([seconds[phase] for seconds in rows])
        ax.barh(names, widths, left=left, label=phase.replace("_", " "))
        left += widths
    ax.set_ylim(len(rows) - 0.5, -0.5)  # in run order, top to bottom, without margins that grow with the runs
    ax.set_xlabel("wall time (s)")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the bars, at any height
    fig.tight_layout()
    return fig


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    runs = load_runs(cfg.dir, kind=("a timed run", lambda run: "time" in run.metrics))
    runs.sort(key=lambda run: (str(run.path.parent), run.path.name.zfill(8)))  # job 2 before job 10
    shared = set.intersection(*(set(run.overrides) for run in runs)) if len(runs) > 1 else set()
    names = [f"{run.path.name}: {','.join(o for o in run.overrides if o not in shared) or 'defaults'}"
             for run in runs]  # what tells the runs apart
    # runs timed before checkpoints had a phase of their own counted them in between_steps and end_of_fit; runs
    # timed while the figures had one ("figures") are read without it
    rows = [dict.fromkeys(PHASES, 0.0) | run.metrics["time"] for run in runs]
    summed = {key: sum(seconds[key] for seconds in rows) for key in (*PHASES, "total")}
    summary = f"summed over {len(rows)} runs, {summed['total']:.0f} s: {share_line(summed)}"
    publish(Path(cfg.dir) / "analysis", figure(names, rows, summary), "time", f"{table(names, rows)}\n{summary}\n",
            "time.md")


if __name__ == "__main__":
    main()
