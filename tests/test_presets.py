"""Experiment presets compose through Hydra and build the models they describe."""
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def test_reasoning_features_preset_builds_the_paper_sized_sae():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=reasoning_features"])
    assert (cfg.data.input_dim, cfg.model.hidden_dim, cfg.data.batch_size) == (4096, 65536, 4096)
    assert cfg.loss.weights.l1_decnorm == 5.0 and cfg.model.lr == 5e-5 and cfg.model.gradient_clip_val == 1.0
    model = instantiate(cfg.model, loss=instantiate(cfg.loss))
    assert sum(p.numel() for p in model.parameters()) == 2 * 4096 * 65536 + 65536 + 4096
    assert (model.sparsity_warmup, model.lr_decay) == (0.05, 0.2)
