"""Experiment presets compose through Hydra and build the models they describe."""
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from runtime import job

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def test_reasoning_features_preset_builds_the_paper_sized_sae():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=reasoning_features"])
    assert (cfg.data.input_dim, cfg.model.hidden_dim, cfg.data.batch_size) == (4096, 65536, 4096)
    assert cfg.loss.weights.l1_decnorm == 5.0 and cfg.model.lr == 5e-5 and cfg.model.gradient_clip_val == 1.0
    model = instantiate(cfg.model, loss=instantiate(cfg.loss))
    assert sum(p.numel() for p in model.parameters()) == 2 * 4096 * 65536 + 65536 + 4096
    assert (model.sparsity_warmup, model.lr_decay) == (0.05, 0.2)


def test_the_lm_experiments_switch_tf32_on_and_the_others_leave_it_off():
    for experiment, tf32 in (("lm_sae", "tf32"), ("reasoning_features_small", "tf32"), ("lm_family", "tf32"),
                             ("ablation", "ieee")):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}"])
        job.set_up_process(cfg)
        assert torch.backends.cuda.matmul.fp32_precision == tf32, experiment
    assert cfg.model.get("sparse_below", 0) == 0  # the ablation's encoder has no decoder to step sparse
    torch.backends.cuda.matmul.fp32_precision = "ieee"
