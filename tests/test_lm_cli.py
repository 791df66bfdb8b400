"""The LM commands through the real train.py and Hydra, on a few thousand tokens of the shipped corpus."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from conftest import ROOT, read_metrics, run_cli

LM_QUICK = ["experiment=lm_sae", "data.max_tokens={train:3000,val:600,test:600}", "model.hidden_dim=128",
            "data.batch_size=256", "data.eval_batch_size=512", "trainer.max_epochs=2", "model.lr=1e-3", "logger=csv",
            "data.progress=false", "callbacks.unit_metrics.figures=false",
            "callbacks.downstream_fidelity.max_sequences=8"]
LM_KEYS = {"fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction", "embedding_loss_clean",
           "embedding_loss_spliced", "embedding_loss_zero_ablated", "embedding_loss_mean_ablated",
           "embedding_recovered", "embedding_recovered_mean", "downstream_recovered", "downstream_recovered_mean"}


@pytest.fixture(scope="module")
def layer_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_layers")
    result = run_cli("train.py", "-m", *LM_QUICK, "experiment=lm_layers", "data.layers=[1,4]", "data.layer=1,4",
                     f"data.cache_dir={root / 'cache'}", f"hydra.sweep.dir={root / 'sweep'}")
    return root, result


def test_layer_sweep_harvests_once_and_trains_one_sae_per_layer(layer_sweep):
    root, result = layer_sweep
    log = result.stdout + result.stderr
    assert log.count("activation cache: harvested into") == 1 and log.count("activation cache: reusing") == 1
    assert len(list((root / "cache").iterdir())) == 1
    for job in ("0", "1"):
        metrics = read_metrics(root / "sweep" / job)
        assert metrics["status"] == "finished" and LM_KEYS <= set(metrics)
        assert 0 < metrics["explained_variance"] < 1 and 0 < metrics["downstream_recovered"] <= 1


def test_lm_analysis_writes_table_and_figures(layer_sweep):
    root, _ = layer_sweep
    result = run_cli("-m", "analysis.lm", f"dir={root / 'sweep'}")
    for stem in ("lm_pareto", "lm_layers", "lm_feature_density"):
        assert (root / "sweep" / "analysis" / f"{stem}.png").stat().st_size > 0
    table = (root / "sweep" / "analysis" / "lm.md").read_text()
    weight = OmegaConf.load(root / "sweep" / "0" / "config_resolved.yaml").loss.weights.l1_decnorm
    for layer in (1, 4):  # each row names its lambda, not the unset +sparsity knob
        assert f"| L{layer} sae:mse_l1_decnorm (λ {weight:g}) | 1 |" in table
    assert "PCA baseline" in result.stdout


def test_export_loads_in_saelens_and_reproduces_the_sae(layer_sweep, tmp_path):
    root, _ = layer_sweep
    run = root / "sweep" / "0"
    run_cli("-m", "analysis.export", f"run={run}", f"out={tmp_path}")
    config = json.loads((tmp_path / "cfg.json").read_text())
    assert config["architecture"] == "standard" and (config["d_in"], config["d_sae"]) == (384, 128)
    assert config["metadata"]["hook_name"] == "encoder.layer.1" and config["metadata"]["sae_lens_version"] >= "6"
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "sae_weights.safetensors")
    assert {name: tuple(t.shape) for name, t in tensors.items()} == {
        "W_enc": (384, 128), "W_dec": (128, 384), "b_enc": (128,), "b_dec": (384,)}
    assert torch.allclose(tensors["W_dec"].norm(dim=1), torch.ones(128), atol=1e-5)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from sae_lens import SAE

    cfg = OmegaConf.load(run / "config_resolved.yaml")
    ours = instantiate(cfg.model, loss=instantiate(cfg.loss))
    ours.load_state_dict(torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    assert float(ours.input_scale) != 1.0  # lm_sae scales its inputs: the export must fold it
    x = 3 * torch.randn(64, 384)  # raw activations, in the units of the harvested ones
    with torch.no_grad():
        theirs = SAE.load_from_disk(str(tmp_path))
        a = theirs.encode(x)
        assert torch.equal(a > 0, ours.encode(x)[1] > 0)
        assert torch.allclose(theirs.decode(a), ours.decode(ours.encode(x)[1]), atol=1e-4)


def test_a_killed_harvest_resumes_to_the_same_cache(tmp_path):
    args = [*LM_QUICK, "data.shard_tokens=100", "data.harvest_batch_size=2", "trainer.max_epochs=1"]
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "train.py", *args, f"data.cache_dir={killed}",
                                f"hydra.run.dir={tmp_path / 'run1'}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline, manifest = time.time() + 120, None
    while time.time() < deadline:  # kill -9 once two shards of train are committed
        found = list(killed.glob("*/manifest.json"))
        if found:
            try:
                manifest = json.loads(found[0].read_text())
            except json.JSONDecodeError:
                continue
            if len(manifest["splits"]["train"]["shards"]) >= 2:
                break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert manifest and not manifest["splits"]["train"]["complete"], "the harvest ended before it was killed"
    resumed = run_cli("train.py", *args, f"data.cache_dir={killed}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert "harvest train: resuming at sequence" in resumed.stdout + resumed.stderr
    unbroken = tmp_path / "unbroken"
    run_cli("train.py", *args, f"data.cache_dir={unbroken}", f"hydra.run.dir={tmp_path / 'run3'}")
    [resumed_dir], [unbroken_dir] = list(killed.iterdir()), list(unbroken.iterdir())
    for split in ("train", "val", "test"):
        for kind in ("tokens", "L3"):
            files = sorted((unbroken_dir / split).glob(f"{kind}-*.npy"))
            resumed_files = sorted((resumed_dir / split).glob(f"{kind}-*.npy"))
            assert files and [f.name for f in files] == [f.name for f in resumed_files]
            for file in files:
                assert np.array_equal(np.load(file), np.load(resumed_dir / split / file.name))
    assert read_metrics(tmp_path / "run2")["fvu"] == read_metrics(tmp_path / "run3")["fvu"]


def truncate_shard(cache):
    shard = next(cache.glob("*/train/L3-00000.npy"))
    shard.write_bytes(shard.read_bytes()[:200])


def zero_payload(cache):  # as dd if=/dev/zero conv=notrunc over the data, the .npy header intact
    shard = next(cache.glob("*/train/L3-00000.npy"))
    data = shard.read_bytes()
    shard.write_bytes(data[:128] + bytes(len(data) - 128))


def random_payload(cache):
    shard = next(cache.glob("*/train/L3-00000.npy"))
    data = shard.read_bytes()
    shard.write_bytes(data[:128] + np.random.default_rng(0).bytes(len(data) - 128))


def nan_in_val(cache):
    shard = next(cache.glob("*/val/L3-00000.npy"))
    array = np.load(shard)
    array[0, 0] = np.nan
    np.save(shard, array)


def truncate_tokens(cache):
    shard = next(cache.glob("*/test/tokens-00000.npy"))
    shard.write_bytes(shard.read_bytes()[:100])


def binary_corpus(tmp_path):
    (tmp_path / "corpus.txt").write_bytes(bytes(range(256)) * 4)
    return f"data.corpus={tmp_path / 'corpus.txt'}"


def mismatch_key(cache):
    manifest = next(cache.glob("*/manifest.json"))
    manifest.write_text(manifest.read_text().replace('"context_length": 128', '"context_length": 64'))


@pytest.mark.parametrize("override, damage, message", [
    ("data.model=/nonexistent/model", None, "data.model=/nonexistent/model: no such model directory"),
    ("data.layer=6", None, "outside the model: minilm has layers 0..5"),
    ("data.site=mlp_out", None, "data.site=mlp_out not found in BertLayer"),
    ("data.corpus=/nonexistent/corpus.txt", None, "data.corpus=/nonexistent/corpus.txt: no such file"),
    ("data.corpus=EMPTY", None, "holds no text"),
    ("data.layer=abc", None, "data.layer=abc is not an int"),
    (binary_corpus, None, "corpus.txt is not UTF-8 text"),
    (None, truncate_shard, "L3-00000.npy is missing, truncated or corrupt"),
    (None, zero_payload, "L3-00000.npy is corrupt (its bytes differ from the harvest's checksum)"),
    (None, random_payload, "L3-00000.npy is corrupt (its bytes differ from the harvest's checksum)"),
    (None, nan_in_val, "val/L3-00000.npy is corrupt (its bytes differ from the harvest's checksum)"),
    (None, truncate_tokens, "test/tokens-00000.npy is missing, truncated or corrupt"),
    (None, mismatch_key, "was written for another key (differs in ['context_length'])"),
])
def test_bad_lm_input_fails_in_one_line_before_training(tmp_path, override, damage, message):
    cache = tmp_path / "cache"
    if damage:  # a good cache first, then damaged
        run_cli("train.py", *LM_QUICK, "trainer.max_epochs=1", f"data.cache_dir={cache}",
                f"hydra.run.dir={tmp_path / 'good'}")
        damage(cache)
    before = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    if callable(override):
        override = override(tmp_path)
    if override == "data.corpus=EMPTY":
        (tmp_path / "empty.txt").write_text("  \n")
        override = f"data.corpus={tmp_path / 'empty.txt'}"
    result = run_cli("train.py", *LM_QUICK, *([override] if override else []), f"data.cache_dir={cache}",
                     f"hydra.run.dir={tmp_path / 'bad'}", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "bad" / "metrics.json").exists()
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before  # nothing overwritten


def test_recipe_analysis_tables_runs_and_traces_validation_from_the_history(layer_sweep, tmp_path):
    root, _ = layer_sweep
    result = run_cli("-m", "analysis.recipe", f"dir={root / 'sweep'}", f"out={tmp_path}")
    table = (tmp_path / "recipe.md").read_text()
    assert table.count("| 0.001 | 2 | ") == 2 and "Measured " in table and "at commit " in table
    assert "| 0 | sae |" in table and "| 1 | sae |" in table  # a row per run folder, named by it
    assert (tmp_path / "recipe.png").is_file() and (tmp_path / "recipe.pdf").is_file()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from analysis.recipe import curve
    from analysis.runs import load_runs

    [run] = [run for run in load_runs(str(root / "sweep")) if run.config["data"]["layer"] == 1]
    *_, (tokens, l0, explained, dead) = curve(run)
    assert tokens == run.metrics["global_step"] * run.config["data"]["batch_size"] and l0 == run.metrics["l0"]
    assert dead == run.metrics["dead_fraction"]
    cfg = OmegaConf.load(run.path / "config_resolved.yaml")
    model = instantiate(cfg.model, loss=instantiate(cfg.loss))
    model.load_state_dict(torch.load(run.path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    datamodule = instantiate(cfg.data, progress=False)
    datamodule.setup("fit")
    x = datamodule.splits["val"][0].double()
    with torch.no_grad():  # the final weights' validation FVU, computed directly in float64
        x_hat = model.double().decode(model.encode(x)[1])
    direct = 1 - (x - x_hat).square().sum() / (x - datamodule.train_mean.double()).square().sum()
    assert explained == pytest.approx(float(direct), abs=1e-3)
    assert "wrote" in result.stdout


def test_an_lm_run_killed_during_its_read_outs_measures_downstream_fidelity_when_run_again(layer_sweep, tmp_path):
    root, _ = layer_sweep
    args = [*LM_QUICK, "experiment=lm_layers", "data.layers=[1,4]", "data.layer=1", f"data.cache_dir={root / 'cache'}",
            f"hydra.run.dir={tmp_path}"]
    killed = run_cli("train.py", *args, "+callbacks.kill._target_=kill_at.KillAt", "+callbacks.kill.hook=on_train_end",
                     env={"PYTHONPATH": str(ROOT / "tests")}, check=False)
    assert killed.returncode == -9 and read_metrics(tmp_path)["status"] != "finished"
    run_cli("train.py", *args)
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "finished" and LM_KEYS <= set(metrics)
    assert metrics["fvu"] == read_metrics(root / "sweep" / "0")["fvu"]  # the same training as the sweep's layer 1


def test_export_says_in_one_line_what_is_wrong(layer_sweep, tmp_path):
    root, _ = layer_sweep
    result = run_cli("-m", "analysis.export", check=False, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: which run? python -m analysis.export run=<run folder>"
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(root / "sweep" / "0"), str(run)], check=True)
    metrics = read_metrics(run) | {"status": "running"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    unfinished = run_cli("-m", "analysis.export", f"run={run}", f"out={tmp_path / 'out'}")
    assert f"note: {run} has not finished (status running)" in unfinished.stdout
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:2000])
    truncated = run_cli("-m", "analysis.export", f"run={run}", check=False)
    assert truncated.returncode != 0 and "Traceback" not in truncated.stderr
    assert truncated.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint {last} is truncated or corrupt")
