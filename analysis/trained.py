"""One trained run, for the commands that read it (export, features, steer): its resolved configuration
and its model with the checkpoint's weights, after checks that say in one line what is wrong."""
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from runtime.checkpoint_io import check_readable
from runtime.job import make_model
from runtime.run_folder import CHECKPOINTS, LAST_CHECKPOINT, read_metrics


def run_config(run_dir: Path) -> DictConfig:
    path = run_dir / "config_resolved.yaml"
    if not path.is_file():
        raise ValueError(f"{path} not found: is {run_dir} a training run folder?")
    return OmegaConf.load(path)


def trained_model(run_dir: Path, checkpoint: str = LAST_CHECKPOINT, advice: str = "train the run again"):
    """(config, model in eval mode on the CPU) of a run; a note when the run has not finished."""
    cfg = run_config(run_dir)
    ckpt = run_dir / CHECKPOINTS / checkpoint
    if not ckpt.is_file():
        raise ValueError(f"{ckpt} not found: is {run_dir} a training run folder?")
    check_readable(str(ckpt), advice=advice)
    status = read_metrics(run_dir).get("status")
    if status != "finished":
        print(f"note: {run_dir} has not finished (status {status}): reading its checkpoint {checkpoint} as it is")
    model = make_model(cfg)
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    return cfg, model.eval()
