"""A run's folder: where a run (or its resume) lives, whether it has finished, and the checks that keep a
command from writing into a folder it would damage. Nothing here imports Lightning."""
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import psutil

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# what a run is; a resume whose config differs in these would load weights into another model or data
WHAT_A_RUN_IS = ("model", "loss", "data")
CHECKPOINTS, LAST_CHECKPOINT = "checkpoints", "last.ckpt"  # <run>/checkpoints/last.ckpt (conf: paths.checkpoints)


def last_checkpoint(run_dir: Path) -> Path:
    """The checkpoint a killed run resumes from."""
    return run_dir / CHECKPOINTS / LAST_CHECKPOINT


class RunRefused(ValueError):
    """A command that would damage a run folder or cannot run in it: one line, before anything is written."""


def run_dir_of(ckpt_path: str | None, default: str) -> str:
    """A run resumed from ``<run>/checkpoints/<name>.ckpt`` continues in ``<run>``; any other path is not a
    run's checkpoint, so the command gets a new folder (which it removes when it refuses the path)."""
    if ckpt_path and Path(ckpt_path).parent.name == CHECKPOINTS and Path(ckpt_path).suffix == ".ckpt":
        return str(Path(ckpt_path).resolve().parent.parent)
    return default


def first_config_only(output_dir: str) -> str | None:
    """``hydra.output_subdir``: a run keeps the .hydra/ of its first start (what later commands compare
    against and analysis reads); a resume or a rerun into the same folder does not rewrite it."""
    return None if (Path(output_dir) / ".hydra" / "config.yaml").is_file() else ".hydra"


def read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not JSON ({error}): it was damaged after the run wrote it (the run writes it "
                         f"whole); delete it, and the same command resumes the run from its last checkpoint and "
                         f"writes it again") from None


def finished(run_dir: Path) -> bool:
    return read_metrics(run_dir).get("status") == "finished"


LIVE = ("running", "trained")  # the statuses of a process still at work, which metrics.json names


def this_process() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": psutil.Process().create_time()}


def process_gone(metrics: dict) -> str | None:
    """Why a run whose metrics say it is at work is not (killed: its process is gone from its host), or None
    while it may be alive (its process is there, or it runs on another host, which cannot be checked here)."""
    process = metrics.get("process")
    if metrics.get("status") not in LIVE or not process or process.get("host") != socket.gethostname():
        return None
    try:
        alive = psutil.Process(process["pid"]).create_time() == process["started"]  # not a reused pid
    except psutil.NoSuchProcess:
        alive = False
    return None if alive else f"its process (pid {process['pid']} on {process['host']}) is gone: it was killed"


def live_process(metrics: dict) -> dict | None:
    """The other process training this run now, if there is one on this host."""
    process = metrics.get("process")
    if (metrics.get("status") in LIVE and process and process.get("host") == socket.gethostname()
            and process.get("pid") != os.getpid() and process_gone(metrics) is None):
        return process
    return None


def trains_further(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether this command's limits go past where the finished run stopped (a longer schedule)."""
    metrics = read_metrics(run_dir)
    max_epochs, max_steps = cfg.trainer.get("max_epochs"), cfg.trainer.get("max_steps") or -1
    return (max_epochs is not None and max_epochs > metrics.get("epoch", 0)
            or max_steps > 0 and max_steps > metrics.get("global_step", 0))


def config_differences(cfg: DictConfig, run_dir: Path) -> list[str]:
    """``key=this command's value (the run's: value)`` for every key of WHAT_A_RUN_IS that differs from the
    configuration the run first started with."""
    first = run_dir / ".hydra" / "config.yaml"
    if not first.is_file():
        return []
    started = OmegaConf.load(first)
    differences = []
    for section in WHAT_A_RUN_IS:
        ours, theirs = flat(plain(cfg.get(section)), section), flat(plain(started.get(section)), section)
        differences += [f"{key}={ours.get(key)} (the run's: {theirs.get(key)})"
                        for key in sorted(ours.keys() | theirs.keys()) if ours.get(key) != theirs.get(key)]
    return differences


def plain(node):
    """A config section as Python values, its interpolations unresolved (as the run's first start wrote them)."""
    return OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node


def flat(tree, prefix: str) -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {key: value for name, child in tree.items() for key, value in flat(child, f"{prefix}.{name}").items()}


def checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path`` if given, else the run folder's own last checkpoint (a requeued job, a re-run command);
    refused in one line where resuming would load another model or data, or the path is not a run's."""
    if cfg.ckpt_path:
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise RunRefused(f"ckpt_path={cfg.ckpt_path} does not exist")
        if run_dir_of(cfg.ckpt_path, "") != str(run_dir.resolve()):
            raise RunRefused(f"ckpt_path={cfg.ckpt_path} is not a run's checkpoint (<run folder>/checkpoints/"
                             f"<name>.ckpt), which a resume continues in")
    else:
        path = last_checkpoint(run_dir)
        if not path.is_file():
            return None
    differences = config_differences(cfg, run_dir)
    if differences:
        raise RunRefused(f"{path} was trained with another configuration: {'; '.join(differences)}; resume it "
                         f"with the run's own configuration, or start a new run without ckpt_path")
    return str(path)


def check_writable(folder: Path) -> None:
    """The folder, or its nearest existing parent, must take new files."""
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not os.access(existing, os.W_OK) or readonly_mount(existing):
        raise RunRefused(f"cannot write to {existing} (read-only); choose another folder with "
                         f"hydra.run.dir= (or hydra.sweep.dir= for -m)")


class WritableFolder(Callback):
    """Hydra callback: a run or sweep folder that cannot be written is one line before Hydra creates it."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.check(config.hydra.sweep.dir)

    @staticmethod
    def check(folder: str) -> None:
        try:
            check_writable(Path(folder))
        except RunRefused as error:
            sys.exit(f"error: {error}")


def readonly_mount(path: Path) -> bool:
    """A read-only file system refuses root too, which os.access does not see."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def remove_if_empty(run_dir: Path) -> None:
    """A run rejected before training leaves no folder behind: Hydra made it, with .hydra/ and train.log."""
    if not run_dir.is_dir() or {path.name for path in run_dir.iterdir()} - {".hydra", "train.log"}:
        return
    shutil.rmtree(run_dir)
    for parent in run_dir.parents:  # outputs/<date>/ (and outputs/) if this run was all they held
        if parent == Path.cwd() or not parent.is_relative_to(Path.cwd()) or any(parent.iterdir()):
            break
        parent.rmdir()
