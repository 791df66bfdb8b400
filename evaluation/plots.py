"""Figures shared by the training callbacks and the analysis commands."""
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from runtime.files import write_whole, written_whole


def show_matrix(ax, matrix: np.ndarray, title: str, axis: str = "unit") -> None:
    """A k x k matrix of values in [0, 1], rows i and columns j, with its colour scale."""
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(f"{axis} j", fontsize=8)
    ax.set_ylabel(f"{axis} i", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # unit indices
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def show_correlation(ax, corr: np.ndarray, firing_frequency: np.ndarray, title: str) -> None:
    """|Corr(a)| of the code, shown as blank when every unit is dead: its all-zero matrix would otherwise
    read as a perfectly decorrelated code."""
    shown = len(corr)
    if not firing_frequency[:shown].any():
        show_matrix(ax, np.full_like(corr, np.nan), f"|Corr(a)|: {title}")
        ax.text(0.5, 0.5, "all units dead\n(no correlation defined)", transform=ax.transAxes, ha="center",
                va="center", fontsize=9, color="tab:red")
        return
    notes = [f"the first {shown} of {len(firing_frequency)} units"] if shown < len(firing_frequency) else []
    dead = int((firing_frequency[:shown] == 0).sum())
    notes += [f"{dead} dead: zero rows"] if dead else []
    show_matrix(ax, np.abs(corr), f"|Corr(a)|: {title}" + (f"\n({'; '.join(notes)})" if notes else ""))


def mean_std_bars(ax, names: list[str], stats: list[tuple[float, float]], texts: list[str] | None = None,
                  hollow: list[bool] | None = None) -> float:
    """Bars of mean ± std over seeds (a nan std, one seed, draws no error bar), each value written above its
    error bar, a ``hollow`` one drawn as an outline (a value that measures nothing); returns the highest bar top."""
    means, stds = zip(*stats)
    bars = ax.bar(names, means, yerr=stds, capsize=3, color="tab:blue")
    for bar, empty in zip(bars, hollow or []):
        if empty:
            bar.set(facecolor="none", edgecolor="grey", hatch="//")
    tops = [m + np.nan_to_num(s) for m, s in stats]
    for x, (top, text) in enumerate(zip(tops, texts or [f"{m:.4g}" for m in means])):
        ax.annotate(text, (x, top), xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    return max(tops)


def unit_figures(corr: np.ndarray, directions: np.ndarray, firing_frequency: np.ndarray,
                 active_counts: np.ndarray, run: str) -> dict:
    """The per-run figures (validation split): |Corr| of the code, cosines of the feature directions,
    firing histograms, and how many latents each example activates; each titled with ``run`` (what the run
    is: its overrides)."""
    unit = directions / np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    figures = {}
    figures["abs_corr"], ax = plt.subplots(figsize=(4.4, 3.9))
    show_correlation(ax, corr, firing_frequency, "validation")
    figures["weight_cosine"], ax = plt.subplots(figsize=(4.4, 3.9))
    show_matrix(ax, np.abs(unit @ unit.T), "|cos| between feature directions", axis="latent")
    figures["firing_frequency"], ax = plt.subplots(figsize=(4.2, 3.2))
    ax.hist(firing_frequency, bins=np.linspace(0, 1, 41), color="tab:blue")
    ax.set_xlabel("fraction of validation examples with a_j > 0")
    ax.set_ylabel("units")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    figures["feature_density"], ax = plt.subplots(figsize=(4.2, 3.2))
    density_histogram(ax, firing_frequency)
    figures["active_counts"], ax = plt.subplots(figsize=(4.2, 3.2))
    active_count_histogram(ax, active_counts)
    for figure in figures.values():
        figure.suptitle(textwrap.fill(run, 56), fontsize=8)
        figure.tight_layout()
    return figures


def density_histogram(ax, firing_frequency: np.ndarray, label: str | None = None) -> None:
    """Histogram of log10 firing frequency (SAELens's feature density plot); dead units are counted
    in the legend, since log10(0) has no bin."""
    alive = firing_frequency[firing_frequency > 0]
    dead = len(firing_frequency) - len(alive)
    ax.hist(np.log10(alive), bins=np.linspace(-6, 0, 49), histtype="step", lw=1.2,
            label=f"{label + ': ' if label else ''}{dead} dead of {len(firing_frequency)}")
    ax.update_datalim([(-6, 0), (0, 1)])  # the bins' span, and a count axis even when every latent is dead
    ax.axvline(-1, color="grey", ls=":", lw=1)  # dense beyond 10%
    ax.set_xlabel("log10 firing frequency (validation)")
    ax.set_ylabel("latents")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)


def active_count_histogram(ax, active_counts: np.ndarray) -> None:
    """The fraction of examples with 0, 1, 2, ... active latents (L0 per example); 0 is drawn in red."""
    fractions = active_counts / max(active_counts.sum(), 1)
    shown = int(np.flatnonzero(fractions)[-1]) + 1 if fractions.any() else 1
    bars = ax.bar(np.arange(shown), fractions[:shown], width=0.9, color="tab:blue")
    bars[0].set_color("tab:red")
    mean = float((np.arange(len(fractions)) * fractions).sum())
    mean_text = f"{mean:.3g}" if mean < 1000 else f"{mean:.0f}"  # 1432, not 1.43e+03
    ax.set_title(f"mean L0 {mean_text}; {fractions[0]:.1%} of examples with none active", fontsize=8)
    ax.set_xlabel("active latents per example (validation)")
    ax.set_xlim(-0.5, max(shown, 4) - 0.5)  # wide enough for whole-number ticks
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # few enough that 4-digit counts do not touch
    ax.set_ylabel("fraction of examples")


def save_figure(figure, stem: Path, formats: tuple[str, ...] = ("pdf", "png")) -> list[Path]:
    """Write ``stem.<format>`` for each format (PDF and PNG by default); return the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(f".{extension}") for extension in formats]
    for path in paths:
        with written_whole(path) as partial:
            figure.savefig(partial, dpi=150, bbox_inches="tight", format=path.suffix[1:])
    plt.close(figure)
    return paths


def publish(out_dir: Path, figure, stem: str, markdown: str, name: str) -> None:
    """An analysis command's output: its figure (PDF + PNG) and its Markdown, both also announced."""
    for path in save_figure(figure, out_dir / stem):
        print(f"wrote {path}")
    write_whole(out_dir / name, markdown)
    print(markdown)
