"""Where a measured number came from: the date, the commit and the machine, stamped on every file a
command writes under results/."""
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
from runtime.files import write_whole

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The checkout's commit, with '+' when its code has uncommitted changes (results/, which the commands
    write, does not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+" if git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results") else "")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def stamp() -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "commit": commit(),
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(),
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}


def stamp_line() -> str:
    s = stamp()
    m = s["machine"]
    device = m["gpu"] or f"{m['cpu']}, {m['cores']} cores"
    return f"Measured {s['date']} at commit {s['commit']} on {device}, torch {m['torch']}."


def runs_line(paths) -> str:
    """Which runs a results file came from, without this machine's paths: each relative to the checkout
    (or the working folder), else by its last two parts."""
    def shown(path) -> str:
        path = Path(path).resolve()
        for base in (ROOT, Path.cwd()):
            if path.is_relative_to(base):
                return str(path.relative_to(base))
        return str(Path(*path.parts[-2:]))

    return f"Runs: {', '.join(shown(path) for path in paths)}."


def output_folder(cfg, runs=None) -> tuple[Path, str]:
    """Where an analysis writes: ``out=`` (a results folder: its Markdown then ends with the stamp and the runs it
    came from, ``runs`` or else ``dir``) or ``<dir>/analysis``; the folder and that ending ("" for the latter)."""
    if not cfg.get("out"):
        return Path(cfg.dir) / "analysis", ""
    return Path(cfg.out), f"\n{stamp_line()} {runs_line(runs or [cfg.dir])}\n"


def write_json_result(path: str | Path, values: dict) -> Path:
    """``values`` with the stamp, as one JSON file (the folder is made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(stamp() | values, indent=2) + "\n")
    return path
