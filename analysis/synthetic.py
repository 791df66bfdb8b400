"""Recovery of known features, from a sweep on synthetic data (``-m experiment=synthetic_benchmark``): a table of
the ground-truth metrics per architecture and sparsity (mean ± std over seeds) and a figure of MCC and F1 of
firing against test L0, one line per architecture, beside the untrained baseline (random unit directions have
the MCC the table's first line states). Metric definitions: evaluation/ground_truth.py.

    python -m analysis.synthetic dir=multirun/<date>/<time> [out=results/synthetic]
"""
import re
from collections import defaultdict

import hydra
import matplotlib.pyplot as plt
from omegaconf import DictConfig

from analysis.runs import architecture, column, group, load_runs, markdown_table, mean_std, seeds_note, sparsity_of
from analysis.stamp import output_folder
from evaluation.ground_truth import random_directions_mcc
from evaluation.plots import publish

COLUMNS = ["l0_test", "gt_mcc", "gt_f1", "gt_precision", "gt_recall", "gt_uniqueness", "gt_shrinkage",
           "gt_dead_latents", "gt_absorption_rate", "gt_parent_miss_alone", "explained_variance"]
PANELS = {"gt_mcc": "MCC (decoder directions vs true features)", "gt_f1": "F1 of firing"}


def is_synthetic(run) -> bool:
    return "gt_mcc" in run.metrics


def random_mcc(run) -> float:
    """The untrained baseline of the run's width against its true features."""
    from sae_lens.synthetic import SyntheticModel

    true = SyntheticModel.load_from_disk(run.path / "true_features").feature_dict.feature_vectors
    return random_directions_mcc(true, run.config["model"]["hidden_dim"])


def figure(groups: dict, baseline: float, title: str):
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5.2 * len(PANELS), 4))
    lines = defaultdict(list)
    for (arch, knob), runs in groups.items():
        lines[arch].append(runs)
    colours = plt.get_cmap("tab20")  # more architectures than tab10 has colours: no two lines share one
    for ax, (metric, label) in zip(axes, PANELS.items()):
        for n, (arch, points) in enumerate(lines.items()):
            l0 = [mean_std(column(runs, "l0_test"))[0] for runs in points]
            stats = [mean_std(column(runs, metric)) for runs in points]
            order = sorted(range(len(points)), key=lambda i: l0[i])
            ax.errorbar([l0[i] for i in order], [stats[i][0] for i in order], yerr=[stats[i][1] for i in order],
                        marker="s" if arch.startswith("encoder") else "o", capsize=3, label=arch,
                        color=colours(n % colours.N))
        if metric == "gt_mcc":
            ax.axhline(baseline, color="grey", linestyle=":", label=f"random directions ({baseline:.2f})")
        ax.set_xscale("log")
        ax.set_xlabel("test L0 (active latents per example)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    runs = load_runs(cfg.dir, needs=("true_features",), kind=("a run on synthetic data", is_synthetic))
    groups = group(runs, lambda run: (architecture(run), sparsity_of(run)))
    groups = dict(sorted(groups.items(), key=lambda item: (item[0][0], [float(n) for n in re.findall(
        r"\d+(?:\.\d+)?(?:e-?\d+)?", item[0][1])])))
    out, ending = output_folder(cfg)
    baseline = random_mcc(runs[0])
    data = runs[0].config["data"]
    true_l0 = mean_std(column(runs, "gt_true_l0"))[0]
    title = (f"{data['num_features']} true features in {data['input_dim']} dimensions, true L0 {true_l0:.2f}; "
             f"{seeds_note(groups)}")
    table = markdown_table({f"{arch} ({knob})": [run.metrics for run in runs] for (arch, knob), runs in groups.items()},
                           COLUMNS)
    markdown = "\n".join([
        "# Recovery of known features", "",
        f"{title}. Untrained baseline: random unit directions, as many as a run's latents, have MCC {baseline:.3f} "
        f"against these features. Mean ± std over seeds; n counts them. Definitions (SAELens's, SynthSAEBench's) in "
        f"evaluation/ground_truth.py; the decoder-free encoder is scored through its rows (it has no decoder, so no "
        f"shrinkage).", "", table, ending])
    publish(out, figure(groups, baseline, title), "synthetic", markdown, "synthetic.md")


if __name__ == "__main__":
    main()
