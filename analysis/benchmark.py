"""Experiment 3: the decoder-free encoder against the SAE family. Figure 3 (FVU against L0 for every
architecture; probe accuracy and parameters at the encoder's L0) and a Markdown table with the
baselines that could refute the paper: predict-the-mean, PCA at k = latents, the randomly initialised
encoder, the raw-input probe, and the tied and untied SAEs nearest the encoder's L0.

    python -m analysis.benchmark dir=multirun/<date>/<time>
"""
from collections import defaultdict
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from analysis.runs import (architecture, column, format_mean_std, group, load_runs, markdown_table, mean_std,
                           seeds_note)
from evaluation.linear_fits import pca_fvu, probe_accuracy
from evaluation.plots import mean_std_bars, publish

COLUMNS = ["l0", "fvu", "explained_variance", "fvu_affine", "mse", "probe_acc", "params", "dead_fraction",
           "redundancy_norm"]
MAX_TRAIN = 10000  # as the runs' FinalEvaluation fits its read-outs


def group_runs(runs) -> dict[tuple[str, float], list]:
    """(architecture, sparsity knob) -> the runs over seeds."""
    return group(runs, lambda run: (architecture(run), float(run.config.get("sparsity", 0))))


def data_baselines(run, k: int) -> dict[str, float]:
    """PCA with k components and the probe on raw inputs, on the data of a run of the sweep."""
    datamodule = instantiate(OmegaConf.create(run.config["data"]))
    datamodule.setup("fit")
    (x_train, y_train), (x_test, y_test) = datamodule.splits["train"], datamodule.splits["test"]
    keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:MAX_TRAIN]
    return {"fvu_pca": pca_fvu(x_train, x_test, k),
            "probe_acc_raw": probe_accuracy(x_train[keep], y_train[keep], x_test, y_test)}


def nearest_l0(groups: dict, name: str, l0: float):
    candidates = [(key, runs) for key, runs in groups.items() if key[0] == name]
    return min(candidates, key=lambda item: abs(mean_std(column(item[1], "l0"))[0] - l0), default=None)


def figure_3(groups: dict, encoder_l0: float | None, at_encoder_l0: dict, baselines: dict):
    figure, (pareto, probe, params) = plt.subplots(1, 3, figsize=(15, 4.2))
    by_arch = defaultdict(list)
    for (name, _), runs in groups.items():
        by_arch[name].append((mean_std(column(runs, "l0")), mean_std(column(runs, "fvu"))))
    for name, points in by_arch.items():
        l0, fvu = zip(*sorted(points))
        marker = "*" if name.startswith("encoder") else "o"
        pareto.errorbar([m for m, _ in l0], [m for m, _ in fvu], xerr=[s for _, s in l0], yerr=[s for _, s in fvu],
                        marker=marker, markersize=12 if marker == "*" else 5, capsize=2, label=name)
    pareto.axhline(1.0, color="grey", ls=":", lw=1, label="predict the mean")
    pareto.axhline(baselines["fvu_pca"], color="black", ls="--", lw=1, label="PCA, k = latents")
    if encoder_l0 is not None:
        pareto.axvline(encoder_l0, color="tab:red", lw=0.8, alpha=0.5)
    pareto.set(xlabel="L0 (active latents per example)", ylabel="FVU on test", title="Reconstruction vs sparsity")
    pareto.legend(fontsize=7)
    names = list(at_encoder_l0)
    where = f"at the encoder's L0 ({encoder_l0:.3g}) or nearest" if encoder_l0 is not None else "(no encoder run)"
    for ax, metric, ylabel in ((probe, "probe_acc", "probe accuracy on test (fraction)"),
                               (params, "params", "trainable parameters (count)")):
        if names:
            mean_std_bars(ax, names, [mean_std(column(at_encoder_l0[name], metric)) for name in names])
        ax.set_ylabel(ylabel)
        ax.set_title(f"{metric} {where}", fontsize=10)
    probe.axhline(baselines["probe_acc_raw"], color="black", ls="--", lw=1, label="raw-input probe")
    if "probe_acc_init" in baselines:
        probe.axhline(baselines["probe_acc_init"], color="grey", ls=":", lw=1, label="random-init encoder")
    probe.legend(fontsize=7)
    figure.suptitle(f"The decoder-free encoder against the SAEs, test split, {seeds_note(groups)} per point "
                    "(error bars: std over seeds, none for one seed)", fontsize=10)
    figure.tight_layout()
    return figure


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    runs = load_runs(cfg.dir, kind=("a run with fvu in metrics.json", lambda run: "fvu" in run.metrics))
    groups = group_runs(runs)
    encoder_runs = [run for run in runs if run.choices["model"] == "encoder"]
    reference = encoder_runs[0] if encoder_runs else runs[0]
    baselines = data_baselines(reference, int(reference.config["model"]["hidden_dim"]))
    encoder_l0 = mean_std(column(encoder_runs, "l0"))[0] if encoder_runs else None
    if encoder_runs:
        baselines["probe_acc_init"] = mean_std(column(encoder_runs, "probe_acc_init"))[0]
    names = sorted({key[0] for key in groups})
    at_encoder_l0 = {name: nearest_l0(groups, name, encoder_l0)[1] for name in names} if encoder_l0 is not None \
        else {}

    rows = {f"{name} (sparsity {knob:g})": [run.metrics for run in group] for (name, knob), group in groups.items()}
    baseline_rows = [
        "| baseline | FVU | probe_acc |", "|---|---|---|",
        "| predict the train mean | 1 | – |",
        f"| PCA, k = {reference.config['model']['hidden_dim']} | {baselines['fvu_pca']:.4g} | – |",
        f"| raw-input probe | – | {baselines['probe_acc_raw']:.4g} |",
    ]
    if encoder_runs:
        init_probe = format_mean_std(column(encoder_runs, "probe_acc_init"))
        baseline_rows.append(f"| random-init encoder | – | {init_probe} |")
    nearest = {f"{name} (nearest L0 {encoder_l0:.3g})": [run.metrics for run in group]
               for name, group in at_encoder_l0.items() if name.startswith("sae")}
    text = (f"# Benchmark (test set; mean ± std over seeds, {seeds_note(groups)})\n\n## All runs\n\n"
            + markdown_table(rows, COLUMNS)
            + "\n## Baselines\n\n" + "\n".join(baseline_rows) + "\n"
            + "\n## Tied and untied SAEs at the encoder's L0\n\n" + markdown_table(nearest, COLUMNS))
    figure = figure_3(groups, encoder_l0, at_encoder_l0, baselines)
    publish(Path(cfg.dir) / "analysis", figure, "figure3_benchmark", text, "benchmark.md")


if __name__ == "__main__":
    main()
