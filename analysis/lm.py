"""SAEs on LM activations, from a multirun (``experiment=lm_layers``, ``lm_family``, or any sweep over
``data=lm``): a per-layer table and figure (L0, FVU, downstream fidelity, dead and dense fractions),
the feature-density histograms, and the matched-L0 Pareto of every architecture against two baselines,
predicting the train mean (FVU 1) and PCA with k components for a code of k active numbers per token.

    python -m analysis.lm dir=multirun/<date>/<time> [out=results/<name>]
"""
import re
from collections import defaultdict
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from analysis.runs import (against_pca, architecture, column, group, left_out_note, load_runs, markdown_table, mean_std,
                           seeds_note, sparsity_of)
from analysis.stamp import output_folder
from evaluation.linear_fits import pca_fvu
from evaluation.plots import density_histogram, publish, save_figure

COLUMNS = ["l0_test", "fvu", "pca_fvu_at_l0", "explained_variance", "downstream_recovered", "downstream_recovered_se",
           "pca_downstream_recovered_at_l0", "beats_pca", "downstream_recovered_mean", "dead_fraction",
           "dense_fraction", "fvu_affine"]
PER_LAYER = {  # metric -> y label, with its unit
    "fvu": "FVU on test",
    "downstream_recovered": "recovered (fraction)",
    "l0_test": "active latents per token",
    "dead_fraction": "dead latents, validation (fraction)",
    "dense_fraction": "dense, > 10% of val tokens (fraction)",
}


def groups_of(runs) -> dict[tuple, list]:
    """(layer, architecture, sparsity knob: "λ 5" or "k 32") -> the runs over seeds, knobs in numeric order."""
    groups = group(runs, lambda run: (run.config["data"]["layer"], architecture(run), sparsity_of(run)))
    return dict(sorted(groups.items(), key=lambda item: (*item[0][:2], [float(n) for n in re.findall(
        r"\d+(?:\.\d+)?(?:e-?\d+)?", item[0][2])])))


def pca_curves(runs) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per layer: test FVU of the top-k principal subspace of train, k = 1 .. d (on a log grid)."""
    curves = {}
    for run in runs:
        layer = run.config["data"]["layer"]
        if layer in curves:
            continue
        datamodule = instantiate(run.config["data"] | {"progress": False})
        datamodule.setup("fit")  # the cache the runs trained on
        x_train, x_test = datamodule.splits["train"][0], datamodule.splits["test"][0]
        ks = np.unique(np.geomspace(1, x_train.shape[1], 16).astype(int))
        curves[layer] = ks, np.array([pca_fvu(x_train, x_test, int(k)) for k in ks])
    return curves


def layer_figure(groups: dict):
    figure, axes = plt.subplots(1, len(PER_LAYER), figsize=(3.4 * len(PER_LAYER), 3.3))
    by_arch = defaultdict(list)
    for (layer, arch, knob), runs in groups.items():
        by_arch[arch, knob].append((layer, runs))
    for ax, (metric, ylabel) in zip(axes, PER_LAYER.items()):
        for (arch, knob), points in by_arch.items():
            stats = [(layer, *mean_std(column(runs, metric))) for layer, runs in points if column(runs, metric)]
            if stats:
                layers, means, stds = zip(*stats)
                ax.errorbar(layers, means, yerr=stds, marker="o", capsize=2, label=f"{arch} ({knob})")
        if metric == "downstream_recovered":
            for (arch, knob), points in by_arch.items():
                stats = [(layer, mean_std(column(runs, "downstream_recovered_mean"))[0]) for layer, runs in points]
                ax.plot(*zip(*stats), ls="--", lw=0.8, color="grey")
            ax.set_title("downstream recovered (dashed: vs mean ablation)", fontsize=8)
        else:
            ax.set_title(metric, fontsize=9)
        ax.set(xlabel="layer", ylabel=ylabel, xticks=sorted({layer for layer, _, _ in groups}))
        if metric.endswith("_fraction"):  # from 0: all zero is not a line in the middle of a ±0.05 axis
            top = 1.05 * ax.get_ylim()[1]
            ax.set_ylim(-0.05 * top, top)
    axes[0].legend(fontsize=6)
    figure.suptitle(f"SAEs on LM activations by layer, test tokens (dead and dense: validation), {seeds_note(groups)} "
                    f"per point", fontsize=10)
    figure.tight_layout()
    return figure


def density_figure(groups: dict):
    """One panel per layer and architecture, its sparsity settings overlaid."""
    panels = sorted({(layer, arch) for layer, arch, _ in groups})
    ncols = min(len(panels), 5)
    nrows = -(-len(panels) // ncols)
    figure, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.0 * nrows), squeeze=False)
    for ax, (layer, arch) in zip(axes.flat, panels):
        for (group_layer, group_arch, knob), runs in groups.items():
            stats = runs[0].path / "unit_stats.npz"
            if (group_layer, group_arch) == (layer, arch) and stats.is_file():
                density_histogram(ax, np.load(stats)["firing_frequency"], None if knob == "–" else knob)
        ax.set_title(f"L{layer} {arch}", fontsize=9)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    figure.suptitle("Feature density (validation tokens; the lowest seed of each setting)", fontsize=10)
    figure.tight_layout()
    return figure


def pareto_figure(groups: dict, curves: dict):
    figure, (fvu_ax, down_ax) = plt.subplots(1, 2, figsize=(11, 4))
    by_arch = defaultdict(list)
    for (layer, arch, _), runs in groups.items():
        by_arch[f"L{layer} {arch}"].append(runs)
    for name, groups_of_runs in by_arch.items():
        for ax, metric in ((fvu_ax, "fvu"), (down_ax, "downstream_recovered")):
            points = sorted((mean_std(column(runs, "l0_test")), mean_std(column(runs, metric))) for runs in groups_of_runs
                            if column(runs, metric))
            if points:
                ax.errorbar([l0[0] for l0, _ in points], [m[0] for _, m in points], xerr=[l0[1] for l0, _ in points],
                            yerr=[m[1] for _, m in points], marker="o", capsize=2, label=name)
    for layer, (ks, fvus) in curves.items():
        fvu_ax.plot(ks, fvus, "k--", lw=1, label=f"L{layer} PCA, k components")
    baseline = [(run.metrics["l0_test"], run.metrics["pca_downstream_recovered_at_l0"]) for runs in groups.values()
                for run in runs if "pca_downstream_recovered_at_l0" in run.metrics]
    if baseline:
        down_ax.scatter(*zip(*baseline), marker="x", color="black", s=18, zorder=3, label="PCA at the run's L0")
    fvu_ax.axhline(1.0, color="grey", ls=":", lw=1, label="predict the train mean")
    fvu_ax.set(xscale="log", xlabel="L0 (active latents per token)", ylabel="FVU on test",
               title="Reconstruction vs sparsity")
    down_ax.set(xscale="log", xlabel="L0 (active latents per token)", ylabel="recovered (zero-ablation baseline)",
                title="Downstream fidelity vs sparsity")
    down_ax.axhline(0.0, color="grey", ls=":", lw=1)
    fvu_ax.legend(fontsize=6)
    down_ax.legend(fontsize=6)
    figure.suptitle(f"SAEs on LM activations, test tokens, {seeds_note(groups)} per point", fontsize=10)
    figure.tight_layout()
    return figure


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    runs = load_runs(cfg.dir, kind=("a run on LM activations", lambda run: "layer" in run.config["data"]))
    groups = groups_of(runs)
    curves = pca_curves(runs)
    rows = {f"L{layer} {arch} ({knob})": [run.metrics | {"beats_pca": against_pca(run.metrics)} for run in group]
            for (layer, arch, knob), group in groups.items()}
    ks = next(iter(curves.values()))[0]  # the same grid for every layer: one width
    pca_rows = ["| layer | " + " | ".join(f"k={k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    pca_rows += [f"| {layer} | " + " | ".join(f"{v:.3g}" for v in fvus) + " |" for layer, (_, fvus) in curves.items()]
    text = (f"# SAEs on LM activations (mean ± std over seeds, {seeds_note(groups)})\n\n"
            f"Test tokens, less those the norm rule left out ({left_out_note(runs[0].metrics)}); dead and dense fractions on "
            f"validation tokens. `pca_*_at_l0`: a PCA fitted on train with as many components as the run's test L0, "
            f"its FVU and downstream recovered through the same splice; `beats_pca` says whether the SAE beats it "
            f"in both, or what it loses. `downstream_recovered_se`: the jackknife standard error over test windows."
            f"\n\n" + markdown_table(rows, COLUMNS)
            + "\n## PCA baseline: test FVU with k principal components of train\n\n" + "\n".join(pca_rows) + "\n")
    out, stamp = output_folder(cfg)
    text += stamp
    for stem, figure in (("lm_layers", layer_figure(groups)), ("lm_feature_density", density_figure(groups))):
        for path in save_figure(figure, out / stem):
            print(f"wrote {path}")
    publish(out, pareto_figure(groups, curves), "lm_pareto", text, "lm.md")


if __name__ == "__main__":
    main()
