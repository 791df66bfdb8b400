"""What each model's defaults give on the default data: one run of every ``model=`` at its defaults,
as a table (the sparsity knob its config sets, L0, test FVU, dead latents, probe accuracy).

    python train.py -m model=encoder,sae,sae_tied,jumprelu,jumprelu_sigmoid,topk,batchtopk,matryoshka,gated
    python -m analysis.defaults dir=multirun/<date>/<time> [out=results/model_defaults]

Writes ``model_defaults.md`` into ``<dir>/analysis``, or into ``out`` stamped with the date, commit and machine.
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig

from analysis.runs import load_runs
from analysis.stamp import output_folder
from lightning_modules.losses import LOSS_TERMS
from runtime.files import write_whole


def sparsity(config: dict) -> str:
    """The model's k, or the weight of its loss's sparsity term; '–' for a model without either."""
    if "k" in config["model"]:
        return f"k {config['model']['k']}"
    weights = config.get("loss", {}).get("weights", {})
    knobs = [f"λ {weight:g} ({name})" for name, weight in weights.items() if LOSS_TERMS[name].sparsity]
    return ", ".join(knobs) or "–"


def table(runs) -> str:
    lines = ["| `model=` | loss | sparsity | L0 (val) | latents | FVU (test) | dead | probe accuracy |",
             "|---" * 8 + "|"]
    for run in runs:
        m = run.metrics
        lines.append(f"| `{run.choices['model']}` | `{run.choices['loss']}` | {sparsity(run.config)} | {m['l0']:.1f} | "
                     f"{run.config['model']['hidden_dim']} | {m['fvu']:.2f} | {m['dead_fraction']:.0%} | "
                     f"{m.get('probe_acc', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="../conf", config_name="analysis")
def main(cfg: DictConfig) -> None:
    runs = load_runs(cfg.dir, kind=("a run of a sparse coder", lambda run: "fvu" in run.metrics))
    runs.sort(key=lambda run: run.choices["model"])
    data = runs[0].choices["data"]
    text = (f"# Each model at its defaults (data={data}, seed {runs[0].seed}, "
            f"{runs[0].metrics['epoch']} epochs)\n\n" + table(runs))
    out, stamp = output_folder(cfg)
    text += stamp
    out.mkdir(parents=True, exist_ok=True)
    write_whole(out / "model_defaults.md", text)
    print(f"wrote {out / 'model_defaults.md'}")
    print(text)


if __name__ == "__main__":
    main()
