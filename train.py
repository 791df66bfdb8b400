"""Train one model on one dataset as composed by Hydra.

    python train.py                                   # conf/train.yaml defaults
    python train.py -m loss=lse,lse_var,lse_var_tc,var_tc seed=0,1,2
"""
import time

INTERPRETER_START = time.time()  # before the imports, which a run's start-up share includes: a shell that execs
# this interpreter (bash -c "...; exec python train.py") keeps its own process start, which is not the run's

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import signal  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_modules.base import NonFiniteLossError
from runtime import config_checks, job
from runtime import resolvers  # noqa: F401  (the ${run_dir_of:...} and other resolvers conf/ uses)
from runtime.errors import first_line
from runtime.run_folder import finished, last_checkpoint, live_process, read_metrics, trains_further

log = logging.getLogger("train")

# A run says where its folder is, its progress, its headline metrics and where its files are; these say
# nothing a user here can act on. W&B's own summary is in its run folder.
os.environ.setdefault("WANDB_SILENT", "true")
warnings.filterwarnings("ignore", message=r".*`srun` command is available on your system")  # local runs on a SLURM host
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # Lightning's own deprecation
# a short run (a capped LM run, a test) logs at its last step anyway (lightning_modules/base.py)
warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval")
logging.captureWarnings(True)  # the warnings that remain go to train.log too


def train(cfg: DictConfig) -> dict | None:
    """Build, fit (and test, with ``test=true``) and return the final metrics; None when the run had already
    finished."""
    run_dir = Path(cfg.paths.output_dir)
    # a requeued job that had finished, a re-run command, a resume that would train nothing more
    try:
        done = finished(run_dir) and not (cfg.ckpt_path and trains_further(cfg, run_dir))
        other = live_process(read_metrics(run_dir))
    except ValueError as error:  # a damaged metrics.json
        raise job.RunError(f"error: {first_line(error)}") from None
    if other:
        raise job.RunError(f"error: {run_dir} is being trained now by pid {other['pid']} on {other['host']}: wait "
                           f"for it to end, or stop it (its checkpoint resumes with this same command)")
    if done:
        log.info("already finished: %s (nothing changed)", run_dir)
        return None
    started = INTERPRETER_START if next(job.JOBS_IN_PROCESS) == 0 else time.time()
    job.set_up_process(cfg)
    datamodule, model, ckpt_path = job.prepare(cfg, run_dir)
    cfg, model, calibrated = job.calibrate_if_asked(cfg, datamodule, model)
    job.write_resolved_config(cfg, run_dir)
    logger = job.make_logger(cfg, calibrated)
    callbacks = job.make_callbacks(cfg, calibrated)  # after calibration: a callback may read the calibrated lambda
    trainer = job.make_trainer(cfg, list(callbacks.values()), logger)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.test:
            trainer.test(model, datamodule=datamodule, ckpt_path="best" if trainer.checkpoint_callback else None)
    except NonFiniteLossError as error:
        job.diverged(error, run_dir)
    except OSError as error:  # a checkpoint or file the disk refused (runtime/checkpoint_io.py): the run resumes later
        raise job.RunError(f"error: {first_line(error)}") from None
    except SystemExit as stop:  # stopped by a signal (callbacks/resume.py): it resumes later; W&B's service got it too
        logger = False
        if isinstance(stop, SIGTERMException) and not SLURMEnvironment.detect():  # SLURM requeues it by itself
            log.warning("interrupted by SIGTERM at step %d (status: interrupted): the same command resumes it from %s",
                        trainer.global_step, last_checkpoint(run_dir))
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        job.close(logger)
    return job.finish(trainer, callbacks, run_dir, started, time.time())


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except job.RunError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(str(error))


if __name__ == "__main__":
    try:
        config_checks.check_unquoted_text(sys.argv[1:])
    except ValueError as error:
        sys.exit(f"error: {error}")
    main()
