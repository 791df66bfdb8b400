"""The MNIST classifier sweep: the top 3 runs by validation CE (a Markdown table with their best
checkpoints, whose logits the SAEs study) and a figure of validation CE against lr per hidden size.

    python -m analysis.classifier dir=multirun/<date>/<time>
"""
import math
from collections import defaultdict
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
from omegaconf import DictConfig

from analysis.runs import Run, load_runs
from evaluation.plots import publish

COLUMNS = ["val/ce", "val/acc", "test/ce", "test/acc"]


def metric(run: Run, name: str) -> float:
    """metrics.json writes non-finite values as strings ("nan"); a missing one (a diverged run) is nan too."""
    return float(run.metrics.get(name, "nan"))


def ranked(runs: list[Run]) -> list[Run]:
    """Lowest validation CE first; diverged runs (non-finite or missing val/ce) last."""
    return sorted(runs, key=lambda run: (not math.isfinite(metric(run, "val/ce")), metric(run, "val/ce")))


def checkpoint(run: Run) -> str:
    path = run.path / "checkpoints" / "best.ckpt"
    return str(path) if path.is_file() else "-"


def top_table(runs: list[Run]) -> str:
    lines = ["| rank | hidden | lr | val CE | val acc | test CE | test acc | checkpoint |", "|---" * 8 + "|"]
    for rank, run in enumerate(runs, 1):
        cells = [f"{metric(run, name):.4g}" for name in COLUMNS]
        model = run.config["model"]
        lines.append(f"| {rank} | {model['hidden_dim']} | {model['lr']:g} | " + " | ".join(cells)
                     + f" | {checkpoint(run)} |")
    return "\n".join(lines) + "\n"


def ce_vs_lr(runs: list[Run]):
    by_hidden = defaultdict(list)
    for run in runs:
        by_hidden[run.config["model"]["hidden_dim"]].append((run.config["model"]["lr"], metric(run, "val/ce")))
    figure, ax = plt.subplots(figsize=(4.2, 3.2))
    for hidden, points in sorted(by_hidden.items()):
        lrs, ces = zip(*sorted(points))
        ax.plot(lrs, ces, marker="o", label=f"hidden {hidden}")  # a diverged run (nan) leaves a gap
    ax.set_xscale("log")
    ax.set_xlabel("lr")
    ax.set_ylabel("validation CE (nats)")
    ax.legend(fontsize=8)
    ax.set_title("MNIST classifier sweep: one run per point", fontsize=9)
    figure.tight_layout()
    return figure


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    runs = ranked(load_runs(cfg.dir, kind=("a classifier run", lambda run: run.choices.get("model") == "classifier")))
    publish(Path(cfg.dir) / "analysis", ce_vs_lr(runs), "classifier_ce_vs_lr",
            "# MNIST classifier: top 3 by validation CE\n\n" + top_table(runs[:3]), "classifier_top3.md")
    print(f"best checkpoint: {checkpoint(runs[0])}")


if __name__ == "__main__":
    main()
