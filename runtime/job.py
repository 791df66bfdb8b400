"""The parts of a training job that train.py puts together: everything that can reject the configuration
or the data before any training starts, the calibration of lambda, the logger, the callbacks and the
trainer, what a failure becomes, and the run's last lines."""
import itertools
import logging
import os
import resource
import sys
import time
from pathlib import Path

import psutil
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from runtime import calibration
from runtime import config_checks
from runtime.allocator import reuse_freed_memory
from callbacks.progress import duration
from callbacks.stopwatch import share_line
from runtime.checkpoint_io import AtomicCheckpointIO, check_fits, check_readable
from runtime.errors import first_line
from runtime.run_folder import checkpoint_to_resume, last_checkpoint, remove_if_empty

log = logging.getLogger("train")

CONFIG_ERRORS = (ValueError, FileNotFoundError, InstantiationException, OSError)  # OSError: a full disk, say
JOBS_IN_PROCESS = itertools.count()  # a sweep's jobs share one process under the sequential launcher
HEADLINE = ("val/total", "l0", "dead_fraction", "fvu", "probe_acc", "val/ce", "val/acc", "test/ce", "test/acc",
            "delta_acc_logits", "downstream_recovered")


class RunError(Exception):
    """A run that cannot start or did not end: one line for the user (a single run exits with it; in a
    sweep it fails that job, which the launcher reports at the end while the others go on)."""


def set_up_process(cfg: DictConfig) -> None:
    if rank_zero_only.rank != 0:  # every DDP rank runs this task: the run's train.log is rank 0's lines
        root = logging.getLogger()
        for handler in [handler for handler in root.handlers if isinstance(handler, logging.FileHandler)]:
            root.removeHandler(handler)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.reuse_freed_memory:
        reuse_freed_memory()
    # TF32 (a 10-bit mantissa in CUDA's fp32 matmuls, Ampere and later); "ieee" keeps them fp32. CPU matmuls
    # are unaffected either way
    torch.backends.cuda.matmul.fp32_precision = "tf32" if cfg.tf32 else "ieee"


def make_model(cfg: DictConfig):
    """A sparse coder takes its loss from the registry; a model with its own objective has no loss group.
    The model's class is imported first, so that a module of its own may register loss terms."""
    build = instantiate(cfg.model, _partial_=True)
    return build(loss=instantiate(cfg.loss)) if cfg.get("loss") else build()


def make_model_within_memory(cfg: DictConfig):
    """The model, if its training state fits: on CPU, weights, gradients and Adam's two moments (4x the
    weights) against the memory available now; a model whose weights alone cannot be allocated says so too."""
    try:
        model = make_model(cfg)
    except RuntimeError as error:  # torch's allocator: "DefaultCPUAllocator: can't allocate memory: ..."
        if "allocate" not in str(error):
            raise
        raise ValueError(f"the model does not fit in memory ({first_line(error).split(': ', 1)[-1][:160]}): "
                         f"lower model.hidden_dim") from None
    on_cpu = config_checks.trains_on_cpu(cfg.trainer)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    available = psutil.virtual_memory().available
    if on_cpu and 4 * weights > available:
        raise ValueError(f"the model's training state needs {4 * weights / 2**30:.1f} GiB (weights, gradients and "
                         f"Adam's two moments: 4 x {weights / 2**30:.1f} GiB) and {available / 2**30:.1f} GiB is "
                         f"available: lower model.hidden_dim")
    return model


def prepare(cfg: DictConfig, run_dir: Path):
    """The data, the model and the checkpoint to resume from, after every check that can reject them: a
    rejection is one line, and leaves no empty run folder behind."""
    try:
        config_checks.check(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        ckpt_path = checkpoint_to_resume(cfg, run_dir)
        state_dict = check_readable(ckpt_path) if ckpt_path else None
        if cfg.calibrate.target_l0 is not None:
            calibration.check(cfg)
        datamodule = instantiate(cfg.data)  # its constructor checks its options
        log.info("run folder: %s", run_dir)  # first: an LM run harvests for minutes in setup
        datamodule.setup("fit")
        model = make_model_within_memory(cfg)
        if ckpt_path:
            check_fits(ckpt_path, state_dict, model)
    except CONFIG_ERRORS as error:
        if rank_zero_only.rank == 0:
            remove_if_empty(run_dir)
        raise RunError(f"error: {first_line(error)}") from None
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    return datamodule, model, ckpt_path


def calibrate_if_asked(cfg: DictConfig, datamodule, model):
    """With ``calibrate.target_l0``, lambda from short runs (calibration.py), and the model built anew with it."""
    if cfg.calibrate.target_l0 is None:
        return cfg, model, None
    calibrated = calibration.calibrate(cfg, datamodule)
    cfg = calibration.with_lambda(cfg, calibrated["lambda"])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    return cfg, make_model(cfg), calibrated


def write_resolved_config(cfg: DictConfig, run_dir: Path) -> None:
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # with the calibrated λ


def make_logger(cfg: DictConfig, calibrated: dict | None):
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if isinstance(logger, WandbLogger):
        import wandb

        # W&B set up from the environment (WANDB_SILENT, train.py) before Lightning starts its run: its settings
        # then stay quiet about the `anonymous` argument that Lightning always passes and W&B no longer reads.
        # They are read once, here: the offline mode Lightning would set when it starts the run is set first
        if cfg.logger.get("offline"):
            os.environ["WANDB_MODE"] = "offline"
        wandb.setup()
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True) | {"calibration": calibrated})
    return logger


def make_callbacks(cfg: DictConfig, calibrated: dict | None) -> dict[str, pl.Callback]:
    """The callbacks of ``cfg.callbacks`` by name, in its order (null disables one); the metrics file
    also records the calibration."""
    extra = {"metrics_file": {"extra": {f"calibration_{key}": value for key, value in (calibrated or {}).items()},
                              "_convert_": "all"}}  # plain lists and dicts, as JSON writes them
    return {name: instantiate(callback, **extra.get(name, {})) for name, callback in cfg.callbacks.items() if callback}


def make_trainer(cfg: DictConfig, callbacks: list[pl.Callback], logger) -> pl.Trainer:
    """Checkpoints written whole or not at all; under SLURM, submitit requeues and Lightning does not
    (callbacks/resume.py)."""
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=plugins)


def diverged(error: Exception, run_dir: Path) -> None:
    """A non-finite loss ends a single run with one line; in a sweep it fails that job like any other error
    (its status says failed): the next jobs go on, and the sweep ends naming it among the failed jobs."""
    last = last_checkpoint(run_dir)
    message = f"error: {error}" + (f"; the last good checkpoint is {last}" if last.is_file() else "")
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        sys.exit(message)
    raise RunError(message)


def close(logger) -> None:
    if logger and hasattr(logger.experiment, "finish"):
        logger.experiment.finish()


def report_end(trainer: pl.Trainer, run_dir: Path, seconds: float) -> None:
    """The run's last lines: its headline metrics and where its files are."""
    metrics = trainer.callback_metrics
    headline = ", ".join(f"{name} {float(metrics[name]):.4g}" for name in HEADLINE if name in metrics)
    log.info("finished in %s (%d steps): %s", duration(seconds), trainer.global_step, headline)
    files = [path.name + "/" * path.is_dir() for path in sorted(run_dir.iterdir()) if not path.name.startswith(".")]
    log.info("files in %s: %s", run_dir, ", ".join(files))
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger.experiment.offline:
            log.info("W&B, offline: wandb sync %s", Path(logger.experiment.dir).parent)


def peak_resident_gib() -> float:
    """The process's peak resident memory since it started this program: Linux's VmHWM. getrusage's ru_maxrss
    would also carry the peak of the process that started it (Linux keeps it across fork and exec): a test
    runner's, a notebook's."""
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    peak_kib = next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), None)
    if peak_kib is None:  # no procfs; macOS gives ru_maxrss in bytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**30 if sys.platform == "darwin" else 2**20)
    return peak_kib / 2**20


def finish(trainer: pl.Trainer, callbacks: dict[str, pl.Callback], run_dir: Path, job_start: float,
           fit_end: float) -> dict:
    """``finished`` in metrics.json, last, with every read-out, the test and the wall time by phase
    (callbacks/stopwatch.py) in; a run killed before this line resumes and completes them."""
    if not trainer.is_global_zero:
        return {}
    report_end(trainer, run_dir, fit_end - job_start)
    stopwatch, values = callbacks.get("stopwatch"), {}
    if stopwatch is not None and "train_end" in stopwatch.marks:
        values["time"] = stopwatch.shares(job_start, fit_end, time.time())
    # the process's high-water mark: in a sweep that runs its jobs in one process, the largest job's so far
    values["peak_rss_gb"] = round(peak_resident_gib(), 3)
    if hasattr(trainer.datamodule, "left_out_summary"):  # LM activations: what the norm rule removed
        values["left_out_tokens"] = trainer.datamodule.left_out_summary()
    metrics = callbacks["metrics_file"].write(trainer, "finished", **values) if "metrics_file" in callbacks else {}
    if "time" in values:
        log.info("time %s: %s; peak memory %.2f GiB resident", duration(values["time"]["total"]),
                 share_line(values["time"]), values["peak_rss_gb"])
    return metrics
