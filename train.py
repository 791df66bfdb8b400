"""Train one model on one dataset as composed by Hydra.

    python train.py                                   # conf/train.yaml defaults
    python train.py -m loss=lse,lse_var,lse_var_tc,var_tc seed=0,1,2
"""
import sys
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import calibration
from activations.language_model import hidden_size
from callbacks.metrics_file import MetricsFile
from lightning_modules.base import NonFiniteLossError

OmegaConf.register_new_resolver("lm_hidden_size", hidden_size, use_cache=True)

CONFIG_ERRORS = (ValueError, FileNotFoundError, InstantiationException)


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


def fit(cfg: DictConfig) -> pl.Trainer:
    run_dir = Path(cfg.paths.output_dir)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    try:
        datamodule, model = build(cfg)
    except CONFIG_ERRORS as error:
        sys.exit(f"error: {root_cause(error)}")
    calibrated = None
    if cfg.calibrate.target_l0 is not None:
        calibrated = calibration.calibrate(cfg, datamodule)
        cfg = calibration.with_lambda(cfg, calibrated["lambda"])
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        model = make_model(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # with the calibrated λ
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True) | {"calibration": calibrated})
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback]  # null disables one
    if calibrated:
        for callback in callbacks:
            if isinstance(callback, MetricsFile):
                callback.extra.update({f"calibration_{key}": value for key, value in calibrated.items()})
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        if cfg.test:
            trainer.test(model, datamodule=datamodule, ckpt_path="best" if trainer.checkpoint_callback else None)
    except NonFiniteLossError as error:
        message = f"error: {error}; last good checkpoint kept in {run_dir / 'checkpoints'}"
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(message)
        print(message, file=sys.stderr)  # a diverged configuration is a result of the sweep, not its end
    finally:
        if logger and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    return trainer


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg)


if __name__ == "__main__":
    main()
