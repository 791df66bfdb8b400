"""Calibrating a penalty model's sparsity weight lambda to a target validation L0.

A geometric grid of short runs, then bisection in log(lambda) between the two grid points that
bracket the target (L0 falls as lambda grows); the lambda whose validation L0 is nearest wins.
"""
import copy
import logging

import numpy as np
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from lightning_modules.losses import LOSS_TERMS

log = logging.getLogger(__name__)


def sparsity_term(cfg: DictConfig) -> str:
    """The one weighted term of the loss that the sparsity coefficient lambda multiplies."""
    terms = [name for name in cfg.loss.weights if LOSS_TERMS[name].sparsity]
    if len(terms) != 1:
        raise ValueError(f"calibration needs a loss with one sparsity penalty (l1, l1_decnorm, l0); "
                         f"loss.weights has {list(cfg.loss.weights)}")
    return terms[0]


def check(cfg: DictConfig) -> None:
    target, latents = cfg.calibrate.target_l0, cfg.model.hidden_dim
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise ValueError(f"calibrate.target_l0={target} is not a number")
    if not 0 < target <= latents:
        raise ValueError(f"calibrate.target_l0 must be in (0, model.hidden_dim={latents}], got {target}")
    if not 0 < cfg.calibrate.lambda_min < cfg.calibrate.lambda_max:
        raise ValueError("calibrate needs 0 < lambda_min < lambda_max")
    sparsity_term(cfg)


def with_lambda(cfg: DictConfig, lam: float) -> DictConfig:
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.loss.weights[sparsity_term(cfg)] = float(lam)
    return cfg


def validation_l0(model, datamodule) -> float:
    model.eval()
    return float((model.codes(datamodule.splits["val"][0]) > 0).sum(1).double().mean())


def short_run_l0(cfg: DictConfig, lam: float, datamodule) -> float:
    cfg = with_lambda(cfg, lam)
    pl.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model, loss=instantiate(cfg.loss))
    trainer = instantiate(cfg.trainer, max_epochs=cfg.calibrate.epochs, logger=False, callbacks=[],
                          enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    return validation_l0(model, datamodule)


def advice(points: list[tuple[float, float]], target: float, epochs: int) -> str:
    """What would bring the target within reach, from the (lambda, L0) points sorted by lambda."""
    (lam_low, l0_low), (lam_high, l0_high) = points[0], points[-1]
    barely = f"L0 barely follows lambda ({l0_low:.3g} at {lam_low:.3g} -> {l0_high:.3g} at {lam_high:.3g})"
    short = (f"the code moves too little in calibrate.epochs={epochs} for lambda to matter (a JumpReLU's threshold "
             f"moves by about the learning rate per step): raise calibrate.epochs or model.lr")
    if min(l0 for _, l0 in points) > target:
        return f"{barely}: {short}" if l0_high > l0_low / 2 else "raise calibrate.lambda_max"
    if max(l0 for _, l0 in points) < target:
        return f"{barely}: {short}" if l0_low < 2 * l0_high else "lower calibrate.lambda_min"
    return "the target lies between grid points: raise calibrate.refine_steps"


def calibrate(cfg: DictConfig, datamodule) -> dict:
    """Returns the chosen lambda and every (lambda, validation L0) point measured."""
    c = cfg.calibrate
    points = []

    def measure(lam: float) -> None:
        points.append((float(lam), short_run_l0(cfg, lam, datamodule)))
        log.info(f"calibration {len(points)}/{c.num + c.refine_steps}: lambda={lam:.4g} -> val L0 {points[-1][1]:.3f}")

    for lam in np.geomspace(c.lambda_min, c.lambda_max, c.num):
        measure(lam)
    for _ in range(c.refine_steps):
        above = [p for p in points if p[1] > c.target_l0]  # lambda too small
        below = [p for p in points if p[1] <= c.target_l0]
        if not above or not below:
            break  # the target lies outside the grid: the nearest end is the answer
        lo, hi = max(p[0] for p in above), min(p[0] for p in below)
        measure(np.sqrt(lo * hi))
    best = min(points, key=lambda p: abs(p[1] - c.target_l0))
    if not np.isclose(best[1], c.target_l0, rtol=0.2):
        log.warning(f"calibration: nearest val L0 {best[1]:.3f} is more than 20% from target {c.target_l0}; "
                    f"{advice(sorted(points), c.target_l0, c.epochs)}")
    return {"lambda": best[0], "target_l0": float(c.target_l0), "grid": sorted(points)}
