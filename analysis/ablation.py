"""Experiment 2: figure 2 (the |Corr| matrices of each loss configuration, and bars of the unit
metrics, mean ± std over seeds) and a Markdown table, from a multirun over ``loss=``.

    python -m analysis.ablation dir=multirun/<date>/<time>
"""
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig

from analysis.runs import group, load_runs, markdown_table, mean_std, seeds_note
from evaluation.plots import mean_std_bars, publish, show_correlation

LABELS = {"lse": "A: lse", "lse_var": "B: lse+var", "lse_var_tc": "C: lse+var+tc", "var_tc": "D: var+tc"}
BARS = {  # metric -> y label, with its unit
    "dead_fraction": "dead units (fraction)",
    "redundancy_norm": "mean Corr²_ij, alive i ≠ j",
    "resp_entropy": "E_x H(r(x)) (nats)",
    "max_resp": "E_x max_j r_j (probability)",
}
TABLE = ["dead_fraction", "dead_at_init", "low_variance_units", "redundancy_norm", "resp_entropy", "max_resp",
         "effective_components", "l0", "l0_eps", "blocked_resp_mass", "weight_norm", "val/lse"]


def label(loss: str) -> str:
    return LABELS.get(loss, loss)


def group_by_loss(runs) -> dict[str, list]:
    """A–D in the README's order, then any other loss configuration."""
    groups = group(runs, lambda run: run.choices["loss"])
    order = list(LABELS)
    return dict(sorted(groups.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def figure_2(groups: dict[str, list]):
    columns = max(len(groups), len(BARS))
    figure, axes = plt.subplots(2, columns, figsize=(3.4 * columns, 6.8))
    for ax, (name, runs) in zip(axes[0], groups.items()):
        run = runs[0]  # the lowest seed
        stats = np.load(run.path / "unit_stats.npz")
        show_correlation(ax, stats["corr"], stats["firing_frequency"], f"{label(name)}, seed {run.seed}")
    for ax in axes[0][len(groups):]:
        ax.axis("off")
    hidden = {run.config["model"]["hidden_dim"] for runs in groups.values() for run in runs}
    all_dead = [all(run.metrics["dead_fraction"] == 1 for run in runs) for runs in groups.values()]
    for ax, (metric, ylabel) in zip(axes[1], BARS.items()):
        stats = [mean_std([run.metrics[metric] for run in runs]) for runs in groups.values()]
        # no alive pair: 0 is no measurement, not a decorrelated code
        texts = ["all dead" if dead and metric == "redundancy_norm" else f"{m:.4g}"
                 for dead, (m, _) in zip(all_dead, stats)]
        top = mean_std_bars(ax, [label(name) for name in groups], stats, texts)
        if metric == "resp_entropy":
            for k in sorted(hidden):  # uniform responsibilities: the largest entropy k units allow
                ax.axhline(np.log(k), color="tab:red", ls="--", lw=1)
                ax.annotate(f"log k = {np.log(k):.3g} (k = {k} units):\nuniform r, the maximum", (1, np.log(k)),
                            xycoords=("axes fraction", "data"), xytext=(-3, 2), textcoords="offset points",
                            ha="right", fontsize=7, color="tab:red")
            top = max(top, 1.25 * np.log(max(hidden)))  # room for its label
        ax.set_ylim(0, 1.0 if metric == "dead_fraction" else 1.15 * top + 1e-12)  # every bar here is >= 0
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(metric, fontsize=9)
    spread = "bars: mean ± std over seeds" if any(len(runs) > 1 for runs in groups.values()) else "bars: one seed"
    figure.suptitle(f"Ablation of the loss terms, validation split, {seeds_note(groups)} per configuration "
                    f"({spread}); matrices: lowest seed", fontsize=10)
    figure.tight_layout()
    return figure


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    encoder = ("an encoder run", lambda run: run.choices.get("model") == "encoder")  # the loss terms are its ablation
    groups = group_by_loss(load_runs(cfg.dir, needs=("unit_stats.npz",), kind=encoder))
    table = markdown_table({label(name): [run.metrics for run in runs] for name, runs in groups.items()}, TABLE)
    publish(Path(cfg.dir) / "analysis", figure_2(groups), "figure2_ablation",
            f"# Ablation (validation split; mean ± std over seeds, {seeds_note(groups)})\n\n" + table,
            "ablation.md")


if __name__ == "__main__":
    main()
