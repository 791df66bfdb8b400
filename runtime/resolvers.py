"""The ``${name:...}`` resolvers that conf/ uses, registered when this module is imported (by train.py, and
by whatever else composes conf/train.yaml)."""
import hashlib
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from activations.language_model import default_layer, hidden_size
from runtime.run_folder import first_config_only, run_dir_of


def run_id(run_dir: str) -> str:
    """One id per run folder: a requeued or resumed job logs to the same W&B run."""
    return hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def run_group() -> str:
    """A sweep's runs are grouped by the sweep's folder; a single run is its own group."""
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.runtime.output_dir


def run_name() -> str:
    """The job's overrides, or "defaults" without any."""
    return HydraConfig.get().job.override_dirname or "defaults"


CACHED = {"lm_hidden_size": hidden_size, "lm_default_layer": default_layer}  # they read a model's config
RESOLVERS = {"run_dir_of": run_dir_of, "first_config_only": first_config_only, "run_id": run_id,
             "run_group": run_group, "run_name": run_name}

for name, resolver in CACHED.items():
    OmegaConf.register_new_resolver(name, resolver, use_cache=True, replace=True)
for name, resolver in RESOLVERS.items():
    OmegaConf.register_new_resolver(name, resolver, replace=True)
