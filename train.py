"""Train one model on one dataset as composed by Hydra.

    python train.py                                   # conf/train.yaml defaults
    python train.py -m loss=lse,lse_var,lse_var_tc,var_tc seed=0,1,2
"""
import hashlib
import itertools
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
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

import calibration
import config_checks
from activations.language_model import default_layer, hidden_size
from allocator import reuse_freed_memory
from callbacks.metrics_file import MetricsFile
from callbacks.progress import duration
from callbacks.stopwatch import share_line, stopwatch_of
from checkpoint_io import AtomicCheckpointIO, check_readable
from lightning_modules.base import NonFiniteLossError
from run_folder import (checkpoint_to_resume, finished, first_config_only, remove_if_empty, run_dir_of,
                        trains_further)

log = logging.getLogger(__name__)

# A run says where its folder is, its progress, its headline metrics and where its files are (see the end
# of fit); these say nothing a user here can act on. W&B's own summary is in its run folder.
os.environ.setdefault("WANDB_SILENT", "true")
warnings.filterwarnings("ignore", message=r".*`srun` command is available on your system")  # local runs on a SLURM host
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning's own deprecation
# Lightning compares log_every_n_steps with its batches; the model logs every n optimiser steps, many to a batch
warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")
logging.captureWarnings(True)  # the warnings that remain go to train.log too
HEADLINE = ("val/total", "l0", "dead_fraction", "fvu", "probe_acc", "val/ce", "val/acc", "test/ce", "test/acc",
            "delta_acc_logits", "downstream_recovered")


def run_id(run_dir: str) -> str:
    """One id per run folder: a requeued or resumed job logs to the same W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def run_group() -> str:
    """A sweep's runs are grouped by the sweep's folder; a single run is its own group."""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.runtime.output_dir


def run_name() -> str:
    return HydraConfig.get().job.override_dirname or "defaults"


OmegaConf.register_new_resolver("lm_hidden_size", hidden_size, use_cache=True)
OmegaConf.register_new_resolver("lm_default_layer", default_layer, use_cache=True)
OmegaConf.register_new_resolver("run_dir_of", run_dir_of)
OmegaConf.register_new_resolver("first_config_only", first_config_only)
OmegaConf.register_new_resolver("run_id", run_id)
OmegaConf.register_new_resolver("run_group", run_group)
OmegaConf.register_new_resolver("run_name", run_name)

CONFIG_ERRORS = (ValueError, FileNotFoundError, InstantiationException, OSError)  # OSError: a full disk, say
JOBS_IN_PROCESS = itertools.count()  # a sweep's jobs share one process under the basic launcher


class RunError(Exception):
    """A run that cannot start or did not end: one line for the user (a single run exits with it; in a
    sweep it fails that job, which the launcher reports at the end while the others go on)."""


def root_cause(error: BaseException) -> str:
    """Hydra wraps a constructor's error in InstantiationException; the user wants the original line."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def build(cfg: DictConfig):
    """Everything that can reject the configuration or the data, before any training starts."""
    if cfg.calibrate.target_l0 is not None:
        calibration.check(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule, make_model(cfg)


def make_model(cfg: DictConfig):
    """A sparse coder takes its loss from the registry; a model with its own objective has no loss group."""
    return instantiate(cfg.model, loss=instantiate(cfg.loss)) if cfg.get("loss") else instantiate(cfg.model)


def make_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    return [instantiate(callback) for callback in cfg.callbacks.values() if callback]  # null disables one


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


def finish(trainer: pl.Trainer, callbacks: list[pl.Callback], job_start: float, fit_end: float,
           first_job: bool) -> None:
    """``finished`` in metrics.json, last, with every read-out, the test and the wall time by phase
    (callbacks/stopwatch.py) in; a run killed before this line resumes and completes them."""
    stopwatch, values = stopwatch_of(trainer), {}
    if stopwatch is not None and "train_end" in stopwatch.marks:
        values["time"] = stopwatch.shares(job_start, fit_end, time.time(), first_job)
    for callback in callbacks:
        if isinstance(callback, MetricsFile):
            callback.write(trainer, "finished", **values)
    if "time" in values:
        log.info("time %s: %s", duration(values["time"]["total"]), share_line(values["time"]))


def fit(cfg: DictConfig) -> pl.Trainer | None:
    run_dir = Path(cfg.paths.output_dir)
    # a requeued job that had finished, a re-run command, a resume that would train nothing more
    if finished(run_dir) and not (cfg.ckpt_path and trains_further(cfg, run_dir)):
        log.info("already finished: %s (nothing changed)", run_dir)
        return None
    started, first_job = time.time(), next(JOBS_IN_PROCESS) == 0
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.reuse_freed_memory:
        reuse_freed_memory()
    try:
        config_checks.check(cfg)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        ckpt_path = checkpoint_to_resume(cfg, run_dir)
        if ckpt_path:
            check_readable(ckpt_path)
        datamodule, model = build(cfg)
    except CONFIG_ERRORS as error:
        if rank_zero_only.rank == 0:
            remove_if_empty(run_dir)
        raise RunError(f"error: {root_cause(error)}") from None
    log.info("run folder: %s", run_dir)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    calibrated = None
    if cfg.calibrate.target_l0 is not None:
        calibrated = calibration.calibrate(cfg, datamodule)
        cfg = calibration.with_lambda(cfg, calibrated["lambda"])
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        model = make_model(cfg)
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # with the calibrated λ
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if isinstance(logger, WandbLogger):
        logger._wandb_init.pop("anonymous", None)  # Lightning always passes it; W&B 0.31 warns that it has no effect
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True) | {"calibration": calibrated})
    callbacks = make_callbacks(cfg)  # after calibration: a callback may read the calibrated lambda
    if calibrated:
        for callback in callbacks:
            if isinstance(callback, MetricsFile):
                callback.extra.update({f"calibration_{key}": value for key, value in calibrated.items()})
    # under SLURM, submitit requeues and Lightning does not (callbacks/resume.py)
    plugins = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=plugins)
    fit_end = None
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.test:
            trainer.test(model, datamodule=datamodule, ckpt_path="best" if trainer.checkpoint_callback else None)
        fit_end = time.time()
        if trainer.is_global_zero:
            report_end(trainer, run_dir, fit_end - started)
    except NonFiniteLossError as error:
        last = run_dir / "checkpoints" / "last.ckpt"
        message = f"error: {error}" + (f"; the last good checkpoint is {last}" if last.is_file() else "")
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(message)
        print(message, file=sys.stderr)  # a diverged configuration is a result of the sweep, not its end
    except OSError as error:  # a checkpoint or file the disk refused (checkpoint_io.py): the run resumes later
        raise RunError(f"error: {error}") from None
    except SystemExit:  # stopped by SLURM (callbacks/resume.py): it resumes later; W&B's service got the signal too
        logger = False
        raise
    finally:
        if logger and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    if fit_end is not None and trainer.is_global_zero:
        finish(trainer, callbacks, started, fit_end, first_job)
    return trainer


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        fit(cfg)
    except RunError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(str(error))


if __name__ == "__main__":
    main()
