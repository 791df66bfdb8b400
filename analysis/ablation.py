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


def all_dead(runs) -> bool:
    """Every unit of every seed dead: a = 0 everywhere, so r is uniform and the redundancy, entropy,
    max_resp and effective components are those of no code at all, not of a decorrelated, spread one."""
    return all(run.metrics["dead_fraction"] == 1 for run in runs)


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
    dead = [all_dead(runs) for runs in groups.values()]
    for ax, (metric, ylabel) in zip(axes[1], BARS.items()):
        stats = [mean_std([run.metrics[metric] for run in runs]) for runs in groups.values()]
        measured = [not d or metric == "dead_fraction" for d in dead]
        texts = [f"{m:.4g}" if ok else f"{m:.4g}\nall dead" for ok, (m, _) in zip(measured, stats)]
        top = mean_std_bars(ax, [label(name) for name in groups], stats, texts, hollow=[not ok for ok in measured])
        if metric == "resp_entropy":
            for k in sorted(hidden):  # uniform responsibilities: the largest entropy k units allow
                ax.axhline(np.log(k), color="tab:red", ls="--", lw=1,
                           label=f"log k = {np.log(k):.3g}: uniform r (k = {k})")
            ax.legend(fontsize=7, loc="upper center", frameon=False)
            top = max(top, 1.3 * np.log(max(hidden)))  # room for the legend above the bars' labels
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
    table = markdown_table({label(name) + (" (all units dead)" if all_dead(runs) else ""): [run.metrics for run in runs]
                            for name, runs in groups.items()}, TABLE)
    dead = [label(name) for name, runs in groups.items() if all_dead(runs)]
    note = (f"\n{', '.join(dead)}: every unit is dead, so a = 0 for every example, r is uniform and its redundancy "
            f"(0), "
            f"responsibility entropy (log k), max_resp (1/k) and effective components (k) measure no code; they are "
            f"hatched in the figure.\n" if dead else "")
    publish(Path(cfg.dir) / "analysis", figure_2(groups), "figure2_ablation",
            f"# Ablation (validation split; mean ± std over seeds, {seeds_note(groups)})\n\n" + table + note,
            "ablation.md")


if __name__ == "__main__":
    main()
