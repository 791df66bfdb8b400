"""The linear read-outs recover known answers on data built to have them."""
import pytest
import torch

from evaluation.linear_fits import fvu, implicit_decoder_fits, pca_fvu, probe_accuracy


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
