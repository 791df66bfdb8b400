"""What makes an LM run's numbers mean what they say: the norm rule that leaves attention-sink tokens out
(planted outliers on the real all-MiniLM-L6-v2), the PCA baseline at the run's L0 and the jackknife standard
error of CE loss recovered (against direct float64 computations)."""
import numpy as np
import pytest
import torch

from activations.cache import ActivationCache
from activations.corpus import tokenize
from activations.harvest import activation_batches, norm_caps
from activations.language_model import load, site_module_names
from datamodules import lm_activations
from evaluation.downstream import recovered_with_se
from evaluation.linear_fits import pca_fvu, pca_reconstruction, principal_subspace
from test_lm import TEXTS, small_datamodule

PLANTED_POSITION = 3


def plant_outliers(model, layer: int = 1) -> None:
    """Position 3 of each batch's first window comes out of block ``layer`` 1000 times larger."""
    block = dict(model.named_modules())[site_module_names(model, [layer], "resid")[layer]]

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[0, PLANTED_POSITION] *= 1000
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    block.register_forward_hook(hook)  # before the harvest's own hooks, which then see the planted output


def test_the_norm_rule_leaves_out_the_planted_outliers_and_nothing_else():
    model, tokenizer = load("minilm")
    plant_outliers(model)
    modules = site_module_names(model, [1], "resid")
    sequences = tokenize(TEXTS * 4, tokenizer, context_length=16, keep_special_tokens=False)
    caps = norm_caps(model, modules, sequences, 4, max_norm_ratio=10)
    everything = list(activation_batches(model, modules, sequences, 4))
    capped = list(activation_batches(model, modules, sequences, 4, caps=caps))
    left_out = [(token["sequence"], token["position"]) for *_, tokens in capped for token in tokens]
    assert left_out == [(begin, PLANTED_POSITION) for begin in range(0, len(sequences), 4)]
    x_all = torch.cat([captured[1] for _, _, captured, _ in everything])
    x_kept = torch.cat([captured[1] for _, _, captured, _ in capped])
    norms = x_all.norm(dim=1)
    assert len(x_kept) == len(x_all) - len(left_out) and x_kept.norm(dim=1).max() <= caps[1]
    assert torch.equal(x_kept, x_all[norms <= caps[1]])  # the rest, in order, untouched
    assert norms.sort().values[-len(left_out) - 1] < caps[1] / 5  # the cap sits in the gap


def test_the_rule_is_in_the_cache_key_and_the_datamodule_reports_and_unmarks_what_it_removed(tmp_path, monkeypatch):
    real_load = lm_activations.language_model.load

    def load_with_outliers(*args, **kwargs):
        model, tokenizer = real_load(*args, **kwargs)
        plant_outliers(model)
        return model, tokenizer

    monkeypatch.setattr(lm_activations.language_model, "load", load_with_outliers)
    keys = {ratio: small_datamodule(tmp_path, max_norm_ratio=ratio).cache_key() for ratio in (None, 10, 20)}
    assert len({ActivationCache(tmp_path, key).dir for key in keys.values()}) == 3
    dm = small_datamodule(tmp_path, max_norm_ratio=10)
    dm.setup("fit")
    manifest = ActivationCache(tmp_path, dm.cache_key()).manifest()
    for split in ("train", "val", "test"):
        left_out = ActivationCache.left_out(manifest, split)
        assert left_out and all(token["position"] == PLANTED_POSITION for token in left_out)
        assert all(token["sequence"] % dm.harvest_batch_size == 0 for token in left_out)  # a batch's first window
        assert not dm.sequences[split].keep[[t["sequence"] for t in left_out], PLANTED_POSITION].any()
        held = np.concatenate(ActivationCache(tmp_path, dm.cache_key()).open(manifest, split, 1)).astype(np.float64)
        assert np.linalg.norm(held, axis=1).max() <= dm.norm_caps[1]
        assert len(held) == dm.sequences[split].tokens  # the windows' harvested positions are the cache's rows
    summary = dm.left_out_summary()
    assert summary["removed"] == {split: len(ActivationCache.left_out(manifest, split)) for split in summary["removed"]}
    assert summary["norm_cap"] == pytest.approx(dm.norm_caps[1], abs=0.01) and len(summary["largest"]) == 5


def test_a_ratio_at_or_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data.max_norm_ratio must be > 1"):
        small_datamodule(tmp_path, max_norm_ratio=0.5)


def test_the_pca_baseline_equals_a_direct_float64_computation():
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 20, generator=generator, dtype=torch.float64)
    x_train = torch.randn(500, 6, generator=generator, dtype=torch.float64) * torch.arange(6, 0, -1) @ basis
    x_test = torch.randn(200, 6, generator=generator, dtype=torch.float64) * torch.arange(6, 0, -1) @ basis
    x_train, x_test = x_train + 0.1 * torch.randn(500, 20, generator=generator, dtype=torch.float64), x_test + 3
    mean = x_train.mean(0)
    for k in (1, 3, 6):
        _, _, vt = np.linalg.svd((x_train - mean).numpy(), full_matrices=False)
        projected = mean.numpy() + (x_test - mean).numpy() @ vt[:k].T @ vt[:k]
        direct = ((x_test.numpy() - projected) ** 2).sum() / ((x_test - mean).numpy() ** 2).sum()
        assert pca_fvu(x_train, x_test, k) == pytest.approx(direct, rel=1e-10)
        centre, vectors = principal_subspace(x_train, k)
        assert np.allclose(pca_reconstruction(x_test, centre, vectors).numpy(), projected, atol=1e-10)
    shifted = x_train.mean(0) + 1  # another centre, as the run passes the whole split's train mean
    _, _, vt = np.linalg.svd((x_train - shifted).numpy(), full_matrices=False)
    projected = shifted.numpy() + (x_test - shifted).numpy() @ vt[:2].T @ vt[:2]
    direct = ((x_test.numpy() - projected) ** 2).sum() / ((x_test - shifted).numpy() ** 2).sum()
    assert pca_fvu(x_train, x_test, 2, mean=shifted) == pytest.approx(direct, rel=1e-10)


def test_the_standard_error_of_recovered_is_the_jackknife_over_windows():
    generator = torch.Generator().manual_seed(1)
    counts = torch.randint(20, 128, (30,), generator=generator).double()
    clean = counts * (2 + torch.rand(30, generator=generator, dtype=torch.float64))
    spliced = clean + counts * torch.rand(30, generator=generator, dtype=torch.float64)
    ablated = spliced + counts * (1 + torch.rand(30, generator=generator, dtype=torch.float64))

    def fraction(rows):
        c, s, a, n = (float(v[rows].sum()) for v in (clean, spliced, ablated, counts))
        return (a / n - s / n) / (a / n - c / n)

    every = list(range(30))
    leave_one_out = [fraction([j for j in every if j != i]) for i in every]
    mean = sum(leave_one_out) / 30
    direct_se = (29 / 30 * sum((value - mean) ** 2 for value in leave_one_out)) ** 0.5
    value, se = recovered_with_se(clean, spliced, ablated, counts)
    assert value == pytest.approx(fraction(every), rel=1e-12) and se == pytest.approx(direct_se, rel=1e-10)
    assert 0 < se < 0.1
