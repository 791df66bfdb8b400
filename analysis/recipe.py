"""Runs of one recipe at different learning rates and lengths, side by side: what each reached on test
tokens against the reasoning-features SAE's reported figures (L0 86, 68.5% variance explained), and the
validation curves that say how it got there.

    python -m analysis.recipe dir=<folder of runs> [out=results/<name>]

Writes ``recipe.md`` (learning rate, epochs, tokens, test L0, explained variance, CE loss recovered,
training minutes) and ``recipe.{pdf,png}`` (validation L0 and explained variance against tokens seen),
into ``<dir>/analysis``, or into ``out`` stamped with the date, commit and machine.
"""
import json
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
from hydra.utils import instantiate
from omegaconf import DictConfig

from analysis.runs import load_runs
from analysis.stamp import stamp_line
from evaluation.plots import publish

TARGET_L0, TARGET_EXPLAINED = 86, 0.685  # arXiv 2503.18878, DeepSeek-R1-Distill-Llama-8B layer 19
TRAINING_PHASES = ("training_steps", "between_steps", "validation", "checkpoints")  # the fit, less its read-outs


def validation_variance(run) -> float:
    """Mean over validation tokens of ||s (x - x̄)||², s the input scale and x̄ the train mean, both as the
    run used them: val/mse divided by it is the validation FVU."""
    datamodule = instantiate(run.config["data"] | {"progress": False})
    datamodule.setup("fit")  # the cache the run trained on
    x = datamodule.splits["val"][0].double()
    scale = datamodule.input_scale or 1.0
    return float(((x - datamodule.train_mean.double()) * scale).square().sum(1).mean())


def curve(run) -> list[tuple[int, float, float]]:
    """(tokens seen, validation L0, validation explained variance) at each validation of the run."""
    variance = validation_variance(run)
    lines = [json.loads(line) for line in (run.path / "history.jsonl").read_text().splitlines() if line]
    by_step = {line["global_step"]: line for line in lines}  # a resumed run may repeat a validation: the last
    batch = run.config["data"]["batch_size"]
    return [(step * batch, line["l0"], 1 - line["val/mse"] / variance) for step, line in sorted(by_step.items())]


def row(run) -> dict:
    metrics, time = run.metrics, run.metrics.get("time", {})
    return {"lr": run.config["model"]["lr"], "epochs": metrics["epoch"],
            "tokens": metrics["global_step"] * run.config["data"]["batch_size"], "l0_test": metrics["l0_test"],
            "explained_variance": metrics["explained_variance"], "ce_loss_recovered": metrics.get("ce_loss_recovered"),
            "training_minutes": sum(time.get(phase, 0.0) for phase in TRAINING_PHASES) / 60}


def table(rows: list[dict]) -> str:
    lines = ["| lr | epochs | tokens | L0 (test) | explained variance (test) | CE loss recovered | training min | "
             "both targets |", "|---" * 8 + "|"]
    for r in rows:
        met = r["l0_test"] <= TARGET_L0 and r["explained_variance"] >= TARGET_EXPLAINED
        ce = "–" if r["ce_loss_recovered"] is None else f"{r['ce_loss_recovered']:.3f}"
        lines.append(f"| {r['lr']:g} | {r['epochs']} | {r['tokens']:,} | {r['l0_test']:.1f} | "
                     f"{r['explained_variance']:.3f} | {ce} | {r['training_minutes']:.1f} | {'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def figure_of(curves: dict[str, list]):
    figure, (l0_ax, ev_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, points in curves.items():
        tokens, l0, explained = zip(*points)
        l0_ax.plot(tokens, l0, marker="o", ms=3, label=label)
        ev_ax.plot(tokens, explained, marker="o", ms=3, label=label)
    l0_ax.axhline(TARGET_L0, color="grey", ls="--", lw=1, label=f"reported L0 {TARGET_L0}")
    ev_ax.axhline(TARGET_EXPLAINED, color="grey", ls="--", lw=1, label=f"reported {TARGET_EXPLAINED:.1%}")
    l0_ax.set(xlabel="training tokens seen", ylabel="L0 (validation)", yscale="log", title="Active latents per token")
    ev_ax.set(xlabel="training tokens seen", ylabel="explained variance (validation)", title="Reconstruction")
    l0_ax.legend(fontsize=7)
    ev_ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    runs = load_runs(cfg.dir, needs=("history.jsonl",),
                     kind=("an SAE on LM activations", lambda run: "layer" in run.config["data"]
                           and "explained_variance" in run.metrics))
    runs.sort(key=lambda run: (run.config["model"]["lr"], run.metrics["epoch"]))
    rows = [row(run) for run in runs]
    curves = {f"lr {r['lr']:g}, {r['epochs']} epoch{'s' * (r['epochs'] != 1)}": curve(run)
              for r, run in zip(rows, runs)}
    data = runs[0].config["data"]
    text = (f"# {data['model']} layer {data['layer']}: the recipe by learning rate and length\n\n"
            f"Test tokens; targets: L0 <= {TARGET_L0} and explained variance >= {TARGET_EXPLAINED:.1%} "
            f"(the reasoning-features SAE). Training minutes: the fit's steps, validation, checkpoints and "
            f"batch fetching, without start-up and end-of-fit read-outs.\n\n" + table(rows))
    out = Path(cfg.out) if cfg.get("out") else Path(cfg.dir) / "analysis"
    if cfg.get("out"):
        text += f"\n{stamp_line()} Runs: {', '.join(str(run.path) for run in runs)}.\n"
    out.mkdir(parents=True, exist_ok=True)
    publish(out, figure_of(curves), "recipe", text, "recipe.md")


if __name__ == "__main__":
    main()
