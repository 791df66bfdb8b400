"""Language-model activations: hooks, splicing, the on-disk cache and the batches read from it, on the
real all-MiniLM-L6-v2 and a tiny GPT-2 (random weights, MiniLM's tokenizer) for the causal paths."""
import logging
import threading

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from activations.cache import ActivationCache
from activations.corpus import tokenize
from activations.harvest import activation_batches, harvest
from activations.language_model import hooks, load, model_path, run_to_last_hook, site_module_names
from datamodules.lm_activations import ActivationDataModule
from evaluation.downstream import downstream_fidelity

TEXTS = ["The tutorial introduces the basic concepts of the language informally.",
         "A module is a file containing definitions and statements; its name is the file name.",
         "Exceptions are raised when an error occurs, and handled by try statements."]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(model_path("minilm"))
    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=32, n_head=2, n_positions=64, vocab_size=tokenizer.vocab_size,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("name", ["minilm", "tiny_gpt2"])
def test_hooks_capture_exactly_the_hidden_states(name, request):
    model, tokenizer = load(request.getfixturevalue(name) if name == "tiny_gpt2" else name)
    n = model.config.num_hidden_layers
    modules = site_module_names(model, list(range(n)), "resid")
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)  # as harvested
    captured = {}
    with torch.no_grad(), hooks(model, modules, capture=captured):
        hidden = model(**batch, output_hidden_states=True).hidden_states
    for layer in range(n - 1):
        assert torch.equal(captured[layer], hidden[layer + 1])
    final_norm = model.transformer.ln_f if name == "tiny_gpt2" else torch.nn.Identity()  # GPT-2 norms the last
    assert torch.equal(final_norm(captured[n - 1]), hidden[n])
    early = run_to_last_hook(model, {1: modules[1]}, batch["input_ids"], batch["attention_mask"])
    assert torch.equal(early[1], hidden[2])


def test_sites_resolve_per_architecture_and_reject_what_a_model_lacks(tiny_gpt2):
    bert, gpt2 = load("minilm")[0], load(tiny_gpt2)[0]
    assert site_module_names(bert, [1], "attn") == {1: "encoder.layer.1.attention.output.dense"}
    assert site_module_names(bert, [1], "mlp") == {1: "encoder.layer.1.output.dense"}
    assert site_module_names(gpt2, [2], "mlp") == {2: "transformer.h.2.mlp"}
    assert site_module_names(gpt2, [0], "mlp.c_fc") == {0: "transformer.h.0.mlp.c_fc"}
    with pytest.raises(ValueError, match="site=mlp_out not found"):
        site_module_names(gpt2, [0], "mlp_out")
    with pytest.raises(ValueError, match=r"outside the model: it has layers 0..2"):
        site_module_names(gpt2, [3], "resid")


@pytest.mark.parametrize("name", ["minilm", "tiny_gpt2"])
def test_splicing_the_activation_back_recovers_everything_and_zeros_nothing(name, request):
    model, tokenizer = load(request.getfixturevalue(name) if name == "tiny_gpt2" else name)
    module = site_module_names(model, [1], "resid")
    sequences = tokenize(TEXTS, tokenizer, context_length=16, keep_special_tokens=False)
    mean = torch.randn(model.config.hidden_size)
    identity = downstream_fidelity(model, module, sequences, {"": lambda x: x}, mean, causal=name == "tiny_gpt2")
    assert identity["downstream_recovered"] == 1.0 and identity["downstream_recovered_mean"] == 1.0
    zero = downstream_fidelity(model, module, sequences, {"": torch.zeros_like}, mean, causal=name == "tiny_gpt2")
    assert zero["downstream_recovered"] == 0.0 and zero["downstream_recovered_mean"] != 0.0
    if name == "tiny_gpt2":
        assert identity["kl_spliced"] == 0.0 and identity["ce_spliced"] == identity["ce_clean"]
        assert zero["kl_spliced"] > 0 and zero["ce_loss_recovered"] == 0.0
    else:
        assert identity["embedding_loss_spliced"] == identity["embedding_loss_clean"] < 1e-12
        assert zero["embedding_loss_zero_ablated"] > 0.01


def test_special_tokens_are_dropped_unless_kept():
    tokenizer = AutoTokenizer.from_pretrained(model_path("minilm"))
    special = torch.tensor(tokenizer.all_special_ids)
    dropped = tokenize(TEXTS, tokenizer, context_length=12, keep_special_tokens=False)
    kept = tokenize(TEXTS, tokenizer, context_length=12, keep_special_tokens=True, keep_first_position=True)
    assert (dropped.input_ids[:, 0] == tokenizer.cls_token_id).all()  # each window is [CLS] ... [SEP]
    assert not torch.isin(dropped.input_ids[dropped.keep], special).any()
    assert kept.tokens == dropped.tokens + 2 * len(kept)
    assert not kept.keep[kept.attention_mask == 0].any()  # padding never


def small_datamodule(cache_dir, **overrides) -> ActivationDataModule:
    options = dict(model="minilm", layer=1, layers=[1, 2], input_dim=384, context_length=32,
                   max_tokens={"train": 600, "val": 200, "test": 200}, cache_dir=str(cache_dir), shard_tokens=128,
                   harvest_batch_size=2, batch_size=64, eval_batch_size=64, progress=False)
    return ActivationDataModule(**(options | overrides))


def test_cache_round_trips_bit_exactly_and_is_reused(tmp_path, caplog):
    dm = small_datamodule(tmp_path)
    dm.setup("fit")
    cache = ActivationCache(tmp_path, dm.cache_key())
    manifest = cache.manifest()
    assert len(manifest["splits"]["train"]["shards"]) > 2  # several shards, each read back
    for split in ("train", "val", "test"):
        direct = list(activation_batches(dm.lm, dm.modules, dm.sequences[split], 2))
        for layer in (1, 2):
            expected = torch.cat([captured[layer] for _, _, captured, _ in direct]).half().numpy()
            assert np.array_equal(np.concatenate(cache.open(manifest, split, layer)), expected)
        assert np.array_equal(cache.tokens(manifest, split), torch.cat([ids for _, ids, _, _ in direct]).numpy())
    with caplog.at_level(logging.INFO):
        again = small_datamodule(tmp_path)
        again.setup("fit")
    assert "activation cache: reusing" in caplog.text and not hasattr(again, "lm")  # no model loaded at all
    assert torch.equal(again.splits["val"][0], dm.splits["val"][0])
    assert torch.equal(again.train_mean, dm.train_mean)


def test_a_job_that_waited_for_another_jobs_harvest_says_it_reused_it(tmp_path, caplog):
    cache = ActivationCache(tmp_path, {"model": "m", "layers": [1], "site": "resid", "dtype": "float16"})
    manifest = cache.new_manifest(width=4, harvest_batch_size=2)
    for state in manifest["splits"].values():
        state["complete"] = True
    holding, release = threading.Event(), threading.Event()

    def other_job():  # holds the lock as a harvesting job does, and completes the cache
        with cache.lock():
            holding.set()
            release.wait()
            cache.write_manifest(manifest)

    thread = threading.Thread(target=other_job)
    thread.start()
    holding.wait()
    threading.Timer(0.5, release.set).start()
    with caplog.at_level(logging.INFO):
        assert harvest(cache, None, {}, {}, 4, 2, 16) == manifest  # nothing left to harvest: no model needed
    thread.join()
    assert f"waiting for another job's harvest into {cache.dir}" in caplog.text
    assert f"reusing {cache.dir}, which another job harvested while this one waited" in caplog.text


def test_training_batches_cover_the_train_split_once_per_epoch_with_and_without_cache(tmp_path):
    dm = small_datamodule(tmp_path, shuffle_window=2)
    dm.setup("fit")
    total = len(dm.train_tokens)
    loader = dm.train_dataloader()  # one per fit, iterated once per epoch, as Lightning does
    epochs = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        epochs.append(list(loader))
    for batches in epochs:
        tokens = torch.cat([t for _, t in batches])
        assert len(tokens) == total and len(batches) == len(loader)
        assert torch.equal(tokens.sort().values, torch.from_numpy(dm.train_tokens).long().sort().values)
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])  # reshuffled each epoch
    x = torch.cat([x for x, _ in epochs[0]])
    assert torch.allclose(x.double().mean(0).float(), dm.train_mean, atol=1e-3)
    streamed = small_datamodule(tmp_path, cache=False, mixing_buffer=200)
    streamed.setup("fit")
    batches = list(streamed.train_dataloader())
    tokens = torch.cat([t for _, t in batches])
    assert torch.equal(tokens.sort().values, torch.from_numpy(dm.train_tokens).long().sort().values)
    assert not torch.equal(tokens, torch.from_numpy(dm.train_tokens).long())  # mixed, not in corpus order


def test_local_text_and_jsonl_files_are_documents(tmp_path):
    from activations.corpus import read_documents

    (tmp_path / "notes.txt").write_text("One plain text file is one document.")
    (tmp_path / "rows.jsonl").write_text('{"text": "First row."}\n\n{"text": "Second row.", "id": "b"}\n')
    documents = read_documents(str(tmp_path))
    assert [text for _, text in documents] == ["One plain text file is one document.", "First row.", "Second row."]
    assert documents[2][0] == "b"
    with pytest.raises(ValueError, match="has no field 'body'"):
        read_documents(str(tmp_path / "rows.jsonl"), text_field="body")
