"""Experiment 2: figure 2 (the |Corr| matrices of each loss configuration, and bars of the unit
metrics, mean ± std over seeds) and a Markdown table, from a multirun over ``loss=``.

    python -m analysis.ablation dir=multirun/<date>/<time>
"""
from collections import defaultdict
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig

from analysis.runs import load_runs, markdown_table, mean_std
from evaluation.plots import publish, show_matrix

ORDER = ["lse", "lse_var", "lse_var_tc", "var_tc"]
BARS = ["dead_fraction", "redundancy_norm", "resp_entropy", "max_resp"]
TABLE = ["dead_fraction", "dead_at_init", "low_variance_units", "redundancy_norm", "resp_entropy", "max_resp",
         "effective_components", "l0", "l0_eps", "blocked_resp_mass", "weight_norm", "val/lse"]


def group_by_loss(runs) -> dict[str, list]:
    groups = defaultdict(list)
    for run in runs:
        groups[run.choices["loss"]].append(run)
    return dict(sorted(groups.items(), key=lambda item: ORDER.index(item[0]) if item[0] in ORDER else len(ORDER)))


def figure_2(groups: dict[str, list]):
    figure, axes = plt.subplots(2, max(len(groups), len(BARS)), figsize=(3.3 * max(len(groups), len(BARS)), 6.4))
    for ax, (name, runs) in zip(axes[0], groups.items()):
        stats = min(runs, key=lambda run: run.config["seed"]).path / "unit_stats.npz"
        show_matrix(ax, np.abs(np.load(stats)["corr"]), f"{name}: |Corr(a)|")
    for ax in axes[0][len(groups):]:
        ax.axis("off")
    for ax, metric in zip(axes[1], BARS):
        stats = [mean_std([run.metrics[metric] for run in runs]) for runs in groups.values()]
        bars = ax.bar(list(groups), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3, color="tab:blue")
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    figure.suptitle("Ablation of the loss terms (bars: mean ± std over seeds)", fontsize=10)
    figure.tight_layout()
    return figure


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    groups = group_by_loss(load_runs(cfg.dir))
    table = markdown_table({name: [run.metrics for run in runs] for name, runs in groups.items()}, TABLE)
    publish(Path(cfg.dir) / "analysis", figure_2(groups), "figure2_ablation",
            "# Ablation (validation set; mean ± std over seeds)\n\n" + table, "ablation.md")


if __name__ == "__main__":
    main()
