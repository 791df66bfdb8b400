"""Reading run folders: the finished runs under a folder (a sweep, several sweeps, run folders), each with
its configuration, its seed and its metrics. What is not a finished run is skipped and listed; two runs
of one configuration and seed stop the analysis, since averaging them would count one seed twice."""
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable

import numpy as np
from omegaconf import OmegaConf

from runtime.run_folder import process_gone

HOW_A_JOB_RAN = ("seed", "torch_threads", "ckpt_path", "hydra.", "hydra/")  # not what it is


@dataclass
class Run:
    path: Path
    choices: dict  # Hydra's config-group choices, e.g. {"loss": "lse_var"}
    config: dict
    metrics: dict
    overrides: list[str]  # the job's command-line overrides

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def configuration(self) -> str:
        """The job's overrides but its seed and how it ran: equal for the seeds of one configuration."""
        kept = [o for o in self.overrides if not o.lstrip("+~").startswith(HOW_A_JOB_RAN)]
        return ",".join(sorted(kept)) or "defaults"


def read_run(path: Path, needs: tuple[str, ...], kind: tuple[str, Callable] | None) -> Run | str:
    """The run in ``path``, or why the command cannot use it."""
    try:
        metrics = json.loads((path / "metrics.json").read_text())
    except FileNotFoundError:
        return "no metrics.json"
    except json.JSONDecodeError:
        return "metrics.json is not JSON"
    if metrics.get("status") != "finished":
        gone = process_gone(metrics)
        return f"status {metrics.get('status')} (epoch {metrics.get('epoch')})" + (f", but {gone}" if gone else "")
    missing = [name for name in (".hydra/hydra.yaml", "config_resolved.yaml", *needs) if not (path / name).exists()]
    if missing:
        return f"no {', '.join(missing)}"
    hydra = OmegaConf.load(path / ".hydra" / "hydra.yaml").hydra
    config = OmegaConf.to_container(OmegaConf.load(path / "config_resolved.yaml"))
    run = Run(path, OmegaConf.to_container(hydra.runtime.choices), config, metrics, list(hydra.overrides.task))
    if kind and not kind[1](run):
        return f"not {kind[0]} (model={run.choices.get('model')}, data={run.choices.get('data')})"
    return run


def load_runs(directory: str | None, needs: tuple[str, ...] = (), kind: tuple[str, Callable[[Run], bool]] | None = None
              ) -> list[Run]:
    """The finished runs under ``directory`` that hold the files in ``needs`` and are of ``kind`` (what the
    command reads: its name and a test of a run), each configuration and seed once."""
    if directory is None:
        sys.exit("error: dir= is missing: the folder of the runs to read (a sweep, a folder of sweeps or of runs)")
    root = Path(directory)
    if not root.is_dir():
        sys.exit(f"error: dir={directory} is not a folder")
    runs, skipped = [], []
    # a run folder: one with its metrics, or one Hydra started (whose metrics.json may be gone)
    folders = {path.parent for path in root.glob("**/metrics.json")}
    folders |= {path.parent.parent for path in root.glob("**/.hydra/hydra.yaml")}
    for folder in sorted(folders):
        run = read_run(folder, needs, kind)
        if isinstance(run, Run):
            runs.append(run)
        else:
            skipped.append(f"skipped {folder}: {run}")
    for line in skipped:
        print(line, file=sys.stderr)
    if not runs:
        sys.exit(f"error: no finished run under {root} (a run folder with metrics.json, status finished, .hydra/, "
                 f"config_resolved.yaml{''.join(', ' + name for name in needs)}{'; ' + kind[0] if kind else ''}); "
                 f"{len(skipped)} skipped")
    folders = sorted({str(run.path.parent) for run in runs})
    if len(folders) > 1:
        print(f"merging the runs of {len(folders)} folders: {', '.join(folders)}", file=sys.stderr)
    group(runs, lambda run: run.configuration)  # one configuration, one seed: once
    return runs


def group(runs: list[Run], key: Callable[[Run], Hashable]) -> dict:
    """Runs by ``key``, each group's runs being its seeds (in seed order); a group holding one seed twice
    stops the analysis with the two runs and how their configurations differ."""
    groups = defaultdict(list)
    for run in sorted(runs, key=lambda run: run.seed):
        same_seed = next((other for other in groups[key(run)] if other.seed == run.seed), None)
        if same_seed is not None:
            differ = sorted(set(run.overrides) ^ set(same_seed.overrides)) or ["nothing: the same run twice"]
            sys.exit(f"error: two runs of {key(run)} with seed {run.seed}, {same_seed.path} and {run.path}, would be "
                     f"averaged as seeds; they differ in {', '.join(differ)}")
        groups[key(run)].append(run)
    return dict(sorted(groups.items()))


def architecture(run: Run) -> str:
    """model:loss, the name a run's family member goes by in tables and legends."""
    return f"{run.choices['model']}:{run.choices['loss']}"


SPARSITY_TERMS = ("l1_decnorm", "l1", "l0", "l0_tanh", "gate_l1")  # the loss terms whose weight is lambda (conf/loss)


def sparsity_of(run) -> str:
    """The run's sparsity knob as the tables and legends show it: lambda of its sparsity term, or k."""
    if "k" in run.config["model"]:
        return f"k {run.config['model']['k']}"
    weights = run.config["loss"]["weights"]
    return ", ".join(f"λ {weights[name]:g}" for name in SPARSITY_TERMS if name in weights) or "–"


def column(runs: list[Run], metric: str) -> list[float]:
    """A metric over runs, skipping those that lack it or hold a non-number."""
    return [run.metrics[metric] for run in runs if isinstance(run.metrics.get(metric), (int, float))]


def seeds_note(groups: dict) -> str:
    """How many seeds each point or bar averages, for a figure's title: "n = 3 seeds", or a range."""
    counts = sorted({len(runs) for runs in groups.values()})
    if len(counts) > 1:
        return f"n = {counts[0]}-{counts[-1]} seeds"
    return f"n = {counts[0]} seed{'s' * (counts[0] > 1)}"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and std over seeds; one seed has no std (nan), so a figure draws no error bar for it."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def format_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.4g} ± {std:.2g}" if len(values) > 1 else f"{mean:.4g}"


def against_pca(metrics: dict) -> str:
    """Whether an LM run's SAE beats the PCA of its own L0 (``pca_*_at_l0``) in FVU and in downstream
    recovered: "yes", "no (FVU, CE)" naming what it loses, or "–" for a run without the baseline."""
    if "pca_fvu_at_l0" not in metrics:
        return "–"
    lost = [name for name, ours, pca in (("FVU", -metrics["fvu"], -metrics["pca_fvu_at_l0"]),
                                          ("CE", metrics.get("downstream_recovered"),
                                           metrics.get("pca_downstream_recovered_at_l0")))
            if isinstance(ours, (int, float)) and isinstance(pca, (int, float)) and ours <= pca]
    return f"no ({', '.join(lost)})" if lost else "yes"


def left_out_note(metrics: dict) -> str:
    """The norm rule as a run applied it, and the tokens it left out of each split."""
    summary = metrics.get("left_out_tokens")
    if not summary or summary.get("max_norm_ratio") is None:
        return "no norm rule: every token kept"
    removed = ", ".join(f"{n} {split}" for split, n in summary["removed"].items())
    return f"norm above {summary['max_norm_ratio']:g}x the median, cap {summary['norm_cap']:.4g}: {removed}"


def cell(values: list) -> str:
    """Mean ± std of the numbers; text (a verdict) shown as it is, each distinct value once."""
    if values and all(isinstance(value, str) for value in values):
        return ", ".join(dict.fromkeys(values))
    return format_mean_std([value for value in values if isinstance(value, (int, float))] or [np.nan])


def markdown_table(groups: dict[str, list[dict]], columns: list[str]) -> str:
    """One row per group, each cell mean ± std over the group's runs (seeds); n counts the runs."""
    lines = ["| run | n | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, metrics in groups.items():
        cells = [cell([m[c] for m in metrics if c in m]) for c in columns]
        lines.append(f"| {name} | {len(metrics)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
