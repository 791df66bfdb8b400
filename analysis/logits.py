"""The fidelity-sparsity frontier on a classifier's logits: the accuracy lost (Δacc) and the cross-entropy
gained (ΔCE) on test with the reconstructed logits, against the achieved test L0, one curve per family
(mean ± std over seeds at each grid point), with the seed study's reference JumpReLU drawn on it; the
table, and the study's two goals checked.

    python -m analysis.logits dir=multirun/<date>/<time>      (after experiment=logits_frontier)
"""
import json
from collections import defaultdict
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
from omegaconf import DictConfig

from analysis.runs import Run, format_mean_std, group, load_runs, mean_std, seeds_note
from analysis.stamp import output_folder
from callbacks.logit_fidelity import MAX_LOSS_SPARSEST, REFERENCE, SPARSEST
from evaluation.plots import publish


def test_split(run: Run) -> dict:
    return json.loads((run.path / "summary.json").read_text())["splits"]["test"]


def setting(run: Run) -> str:
    """The grid point: the calibration target for the penalty models, k for the top-k ones."""
    target = run.config["calibrate"]["target_l0"]
    return f"target L0 {target:g}" if target is not None else f"k {run.config['model']['k']}"


def frontier(runs: list[Run]) -> dict[str, dict[str, list[dict]]]:
    """family -> grid point -> the test split of each seed."""
    families = defaultdict(dict)
    for (family, point), seeds in group(runs, lambda run: (run.choices["model"], setting(run))).items():
        families[family][point] = [test_split(run) for run in seeds]
    return families


def stats(seeds: list[dict], key: str) -> tuple[float, float]:
    return mean_std([seed[key] for seed in seeds])


def figure(families):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for (key, scale, label), ax in zip([("delta_acc", 100, "Δacc on test (points lost)"),
                                        ("delta_ce", 1, "ΔCE on test (nats gained)")], axes):
        for name, points in sorted(families.items()):
            rows = sorted((*stats(seeds, "l0"), *stats(seeds, key)) for seeds in points.values())
            l0, l0_std, value, value_std = (list(column) for column in zip(*rows))
            ax.errorbar(l0, [scale * v for v in value], xerr=l0_std, yerr=[scale * v for v in value_std],
                        marker="o", ms=4, capsize=2, label=name)
        ax.plot(REFERENCE["l0"], scale * REFERENCE[key], marker="*", ms=14, color="black", ls="none",
                label="reference JumpReLU (seed study)")
        ax.set_xlabel("L0 on test (active latents per example)")
        ax.set_ylabel(label)
        ax.axhline(0, color="grey", lw=0.6)
    axes[0].legend(fontsize=7)
    points = {(name, point): seeds for name, family in families.items() for point, seeds in family.items()}
    fig.suptitle(f"SAEs on the classifier's logits, test split, {seeds_note(points)} per point "
                 "(error bars: std over seeds, none for one seed)", fontsize=9)
    fig.tight_layout()
    return fig


def table(families) -> str:
    lines = ["| family | grid point | seeds | L0 test | Δacc (points lost) | ΔCE | examples with no active latent |",
             "|---" * 7 + "|"]
    for name, points in sorted(families.items()):
        for point, seeds in sorted(points.items()):
            cells = [format_mean_std([scale * seed[key] for seed in seeds])
                     for key, scale in [("l0", 1), ("delta_acc", 100), ("delta_ce", 1)]]
            zero = [seed["frac_zero_active"] for seed in seeds if "frac_zero_active" in seed]
            cells.append(f"{100 * mean_std(zero)[0]:.1f}%" if zero else "-")
            lines.append(f"| {name} | {point} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def goals(families) -> str:
    points = [(name, point, stats(seeds, "l0")[0], stats(seeds, "delta_acc")[0])
              for name, family in families.items() for point, seeds in family.items()]
    any_jumprelu = any(p[0].startswith("jumprelu") for p in points)
    jumprelu = [p for p in points if p[0].startswith("jumprelu") and p[2] <= REFERENCE["l0"]]
    best = min(jumprelu, key=lambda p: p[3], default=None)
    sparsest = min([p for p in points if p[2] <= SPARSEST], key=lambda p: p[3], default=None)

    def verdict(point, limit):
        if point is None:
            return "missed: no grid point that sparse"
        name, grid, l0, delta = point
        return f"{'met' if delta < limit else 'missed'}: {name} at {grid}, L0 {l0:.3g}, Δacc {100 * delta:.2f} points"

    return (f"- a JumpReLU below the reference (L0 ≤ {REFERENCE['l0']}, Δacc < {100 * REFERENCE['delta_acc']:.2f} "
            f"points): {verdict(best, REFERENCE['delta_acc']) if any_jumprelu else 'not measured: no JumpReLU here'}\n"
            f"- the best family at L0 ≤ {SPARSEST} with Δacc ≤ {100 * MAX_LOSS_SPARSEST:.0f} points: "
            f"{verdict(sparsest, MAX_LOSS_SPARSEST + 1e-12)}\n")


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    families = frontier(load_runs(cfg.dir, needs=("summary.json",)))  # experiment=logits_frontier writes it
    markdown = ("# Fidelity-sparsity frontier on the classifier's logits (test, mean ± std over seeds)\n\n"
                + table(families) + "\n## Goals\n\n" + goals(families))
    out, stamp = output_folder(cfg)
    markdown += stamp
    publish(out, figure(families), "logits_frontier", markdown, "logits_frontier.md")


if __name__ == "__main__":
    main()
