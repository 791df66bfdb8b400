"""The linear read-outs recover known answers on data built to have them."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation import linear_fits
from evaluation.linear_fits import affine_fvu, fvu, implicit_decoder_fits, pca_fvu, probe_accuracy


def test_fvu_is_zero_for_a_perfect_reconstruction_and_uses_the_given_mean():
    x = torch.randn(100, 5)
    assert fvu(x, x, x.mean(0)) == 0
    # predicting the test mean scores 2 / (4 + 0) against a train mean of 1, not 1 against its own
    x_test = torch.tensor([[-1.0], [1.0]])
    assert fvu(x_test, torch.zeros_like(x_test), torch.tensor([1.0])) == pytest.approx(0.5)


def test_implicit_decoder_fits_recover_gain_and_offset():
    generator = torch.Generator().manual_seed(0)
    W, offset = torch.randn(4, 10, generator=generator), torch.randn(10, generator=generator)
    a_train, a_test = (torch.relu(torch.randn(n, 4, generator=generator)) for n in (500, 200))
    a_train[:, 0], a_test[:, 0] = 0, 0  # a dead unit leaves the affine fit singular without its ridge
    x_train, x_test = offset + 3 * a_train @ W, offset + 3 * a_test @ W
    fits = implicit_decoder_fits(a_train, x_train, a_test, x_test, W)
    assert fits["alpha"] == pytest.approx(3)
    assert fits["fvu"] == pytest.approx(0, abs=1e-10) and fits["mse"] == pytest.approx(0, abs=1e-10)
    assert fits["explained_variance"] == pytest.approx(1)
    assert fits["fvu_affine"] == pytest.approx(0, abs=1e-6)
    assert fits["mse_raw"] == pytest.approx(float((offset + 2 * a_test @ W).square().mean()), rel=1e-5)


def test_pca_fvu_vanishes_at_the_rank_of_the_data():
    generator = torch.Generator().manual_seed(0)
    basis, shift = torch.randn(3, 12, generator=generator), torch.randn(12, generator=generator)
    x_train, x_test = (shift + torch.randn(n, 3, generator=generator) @ basis for n in (400, 100))
    assert pca_fvu(x_train, x_test, 3) == pytest.approx(0, abs=1e-8)
    assert pca_fvu(x_train, x_test, 1) > 0.1
    assert pca_fvu(x_train, x_test, 0) == pytest.approx(1)  # the train mean alone


def test_probe_separates_clusters_and_is_at_chance_on_random_labels():
    generator = torch.Generator().manual_seed(0)
    means = 10 * torch.randn(4, 6, generator=generator)
    y_train, y_test = torch.randint(4, (2000,), generator=generator), torch.randint(4, (2000,), generator=generator)
    x_train = means[y_train] + torch.randn(2000, 6, generator=generator)
    x_test = means[y_test] + torch.randn(2000, 6, generator=generator)
    accuracy = probe_accuracy(x_train, y_train, x_test, y_test)
    assert accuracy > 0.99
    assert probe_accuracy(x_train, y_train, x_test, y_test) == accuracy  # deterministic
    # labels independent of x: 2000 test examples put two-class chance at 0.5 +- 0.011
    coin_train, coin_test = (torch.randint(2, (2000,), generator=generator) for _ in range(2))
    assert abs(probe_accuracy(x_train, coin_train, x_test, coin_test) - 0.5) < 0.05


def ridge_reference(a_train, x_train, a_test, x_test, ridge=1e-8):
    """The affine read-out's definition, written out: centred normal equations over the k x k Gram matrix."""
    a_mean, x_mean = a_train.mean(0), x_train.mean(0)
    a, x = a_train - a_mean, x_train - x_mean
    gram = a.T @ a
    decoder = torch.linalg.solve(gram + ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype),
                                 a.T @ x)
    return float(fvu(x_test, x_mean + (a_test - a_mean) @ decoder, x_mean))


# the k x k form; the n x n one on codes 16% set (multiplied densely, in one block of latents and in blocks of
# 64, the last one short), then 2% set (as their nonzeros)
@pytest.mark.parametrize("n_train, latents, shift, block", [(300, 40, 1, None), (40, 300, 1, None),
                                                            (40, 300, 1, 64), (40, 300, 2, None)])
def test_affine_fvu_is_the_ridge_solution_through_either_gram_matrix(n_train, latents, shift, block, monkeypatch):
    if block is not None:
        monkeypatch.setattr(linear_fits, "row_chunk_size", lambda width: max(1, block * n_train // max(width, 1)))
    generator = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(n_train + 100, latents, generator=generator, dtype=torch.float64) - shift)
    a[:, 0], a[:, 1] = 0, 2.0  # a dead unit and a constant one: singular without the ridge
    x = 3 + a @ torch.randn(latents, 6, generator=generator, dtype=torch.float64) \
        + torch.randn(len(a), 6, generator=generator, dtype=torch.float64)
    expected = ridge_reference(a[:n_train], x[:n_train], a[n_train:], x[n_train:])
    assert 0.01 < expected < 2
    assert affine_fvu(a[:n_train], x[:n_train], a[n_train:], x[n_train:]) == pytest.approx(expected, rel=1e-6)
    if latents > n_train:  # train codes handed over as their nonzeros (the streamed final evaluation's)
        fitted = affine_fvu(a[:n_train].to_sparse(), x[:n_train], a[n_train:], x[n_train:])
        assert fitted == pytest.approx(expected, rel=1e-6)


def test_read_outs_at_65536_latents_stay_within_3_gb():
    """A k x k Gram matrix at 65,536 latents is 34 GB in float64, and a float64 copy of these codes 0.4 GB:
    the fits must go through the n x n form and chunks to finish under an address-space limit of 3 GB."""
    script = """
import resource
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
import torch
from evaluation.linear_fits import implicit_decoder_fits
generator = torch.Generator().manual_seed(0)
a = torch.relu(torch.randn(800, 65536, generator=generator) - 3)  # about 88 of 65,536 active
W = torch.randn(65536, 64, generator=generator) / 256
fits = implicit_decoder_fits(a[:400], a[:400] @ W, a[400:], a[400:] @ W, W)
print(fits["fvu"], fits["fvu_affine"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    implicit, affine = map(float, done.stdout.split())
    assert implicit == pytest.approx(0, abs=1e-9)  # x is exactly a @ W: the implicit decoder recovers it
    assert 0 <= affine < 1.1  # 400 train rows, 65,536 latents: an affine read-out that interpolates train


def test_the_dense_dual_fit_allocates_little_beyond_its_decoder():
    """An untrained SAE's codes are half set, so the affine read-out multiplies them densely; at 65,536 latents
    its float64 [k, d] decoder is the one allocation that scales with k x d: building it in blocks and
    centring it must not hold a second or third copy (resident memory grows by under 1.5 decoders)."""
    script = """
import psutil
import torch
from evaluation.linear_fits import affine_decoder
from runtime.job import peak_resident_gib
generator = torch.Generator().manual_seed(0)
a = torch.relu(torch.randn(64, 65536, generator=generator))  # half set: the dense path
x = torch.randn(64, 1024, generator=generator)
before = psutil.Process().memory_info().rss  # resident now, not the peak so far (imports pass through higher)
decoder, offset = affine_decoder(a, x)
grown = peak_resident_gib() * 2**30 - before
print(grown / (decoder.numel() * decoder.element_size()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0.9 < float(done.stdout) < 1.5
