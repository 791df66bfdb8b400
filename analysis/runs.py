"""Reading a multirun directory: every job folder with a metrics.json, its config and its choices."""
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf


@dataclass
class Run:
    path: Path
    choices: dict  # Hydra's config-group choices, e.g. {"loss": "lse_var"}
    config: dict
    metrics: dict


def load_runs(multirun_dir: str) -> list[Run]:
    root = Path(multirun_dir)
    runs = []
    for metrics_file in sorted(root.glob("**/metrics.json")):
        path = metrics_file.parent
        hydra_file, config_file = path / ".hydra" / "hydra.yaml", path / "config_resolved.yaml"
        if not (hydra_file.is_file() and config_file.is_file()):
            continue
        choices = OmegaConf.to_container(OmegaConf.load(hydra_file).hydra.runtime.choices)
        config = OmegaConf.to_container(OmegaConf.load(config_file))
        runs.append(Run(path, choices, config, json.loads(metrics_file.read_text())))
    if not runs:
        sys.exit(f"error: no finished job (metrics.json + .hydra/) under {root}")
    return runs


def architecture(run: Run) -> str:
    """model:loss, the name a run's family member goes by in tables and legends."""
    return f"{run.choices['model']}:{run.choices['loss']}"


def column(runs: list[Run], metric: str) -> list[float]:
    """A metric over runs, skipping those that lack it or hold a non-number."""
    return [run.metrics[metric] for run in runs if isinstance(run.metrics.get(metric), (int, float))]


def mean_std(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def format_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.4g} ± {std:.2g}" if len(values) > 1 else f"{mean:.4g}"


def markdown_table(groups: dict[str, list[dict]], columns: list[str]) -> str:
    """One row per group, each cell mean ± std over the group's runs (seeds); n counts the runs."""
    lines = ["| run | n | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, metrics in groups.items():
        cells = [format_mean_std([m[c] for m in metrics if isinstance(m.get(c), (int, float))] or [np.nan])
                 for c in columns]
        lines.append(f"| {name} | {len(metrics)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
