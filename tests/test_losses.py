import numpy as np
import pytest
import torch

from analysis.theorem import gradient_vs_responsibility
from lightning_modules.losses import LOSS_TERMS, CompositeLoss, lse_and_responsibilities
from lightning_modules.outputs import Code, Reconstruction, TopKOutput

OPTIONS = dict(eps=1e-6, bounded_variance=False, tanh_scale=4.0)


def code(a):
    """A code-only output, for the terms that read the code alone."""
    return Code(x=a, z=a, a=a)


def relu_codes(n=64, k=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(n, k, generator=generator, dtype=torch.float64) * 2)


def test_lse_gradient_is_exactly_the_responsibility_in_float64():
    a = relu_codes()
    grad, resp = gradient_vs_responsibility(a)
    assert (a == 0).any()  # zeros exercise the ReLU's inactive units too
    assert torch.allclose(grad, resp, rtol=0, atol=1e-15)
    assert torch.allclose(resp.sum(dim=1), torch.ones(len(a), dtype=torch.float64), atol=1e-15)


def test_lse_value_matches_a_direct_computation():
    a = relu_codes()
    loss, _ = lse_and_responsibilities(a)
    expected = -np.log(np.exp(-a.numpy()).sum(axis=1))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)


def test_variance_terms_match_numpy():
    a = relu_codes()
    var = a.numpy().var(axis=0, ddof=1)
    got = LOSS_TERMS["variance"](code(a), OPTIONS)
    np.testing.assert_allclose(got.item(), -np.log(var + 1e-6).sum(), rtol=1e-12)
    bounded = LOSS_TERMS["variance"](code(a), OPTIONS | {"bounded_variance": True})
    np.testing.assert_allclose(bounded.item(), (var - np.log(var + 1e-6)).sum(), rtol=1e-12)


def test_decorrelation_is_the_off_diagonal_sum_of_squared_correlations():
    a = relu_codes()
    corr = np.corrcoef(a.numpy(), rowvar=False)
    expected = (corr**2).sum() - np.trace(corr**2)
    got = LOSS_TERMS["decorrelation"](code(a), OPTIONS | {"eps": 1e-12})
    np.testing.assert_allclose(got.item(), expected, rtol=1e-8)


def test_composite_reports_every_term_but_sums_only_the_weighted_ones():
    a = relu_codes().requires_grad_(True)
    loss = CompositeLoss({"lse": 0.0, "variance": 2.0, "decorrelation": 1.0})
    terms = loss(code(a))
    assert set(terms) == {"lse", "variance", "decorrelation", "total", "objective"}
    assert not terms["lse"].requires_grad  # weight 0: reported, not differentiated
    torch.testing.assert_close(terms["total"], 2 * terms["variance"] + terms["decorrelation"])


def test_terms_are_per_example_and_a_summed_objective_is_batch_size_times_the_mean():
    a = relu_codes(n=32)
    summed = CompositeLoss({"lse": 1.0, "variance": 2.0}, reduction="sum")(code(a))
    mean = CompositeLoss({"lse": 1.0, "variance": 2.0}, reduction="mean")(code(a))
    expected_lse = LOSS_TERMS["lse"](code(a), OPTIONS).mean()
    for terms in (summed, mean):
        torch.testing.assert_close(terms["lse"], expected_lse)
        torch.testing.assert_close(terms["total"], expected_lse + 2 * terms["variance"])
    torch.testing.assert_close(mean["objective"], mean["total"])
    # the batch statistic counts once
    torch.testing.assert_close(summed["objective"], 32 * expected_lse + 2 * summed["variance"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights={"lse": 1, "bogus": 1}), "unknown loss term"),
    (dict(weights={"lse": -1}), ">= 0"),
    (dict(weights={"lse": 0}), "at least one"),
    (dict(weights={"lse": 1}, reduction="max"), "reduction"),
    (dict(weights={"lse": 1}, eps=0), "eps"),
])
def test_impossible_loss_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompositeLoss(**kwargs)


def test_a_term_the_model_cannot_feed_is_rejected():
    with pytest.raises(ValueError, match="needs \\['decoder_norms', 'nonnegative_codes', 'x_hat'\\]"):
        CompositeLoss({"mse": 1.0}).check_outputs(Code, "DecoderFreeEncoder")
    CompositeLoss({"mse": 1.0, "l1": 1.0}).check_outputs(Reconstruction, "SparseAutoencoder")
    with pytest.raises(ValueError, match="needs \\['gate_activity', 'gate_x_hat'\\]"):
        CompositeLoss({"gate_l1": 1.0}).check_outputs(TopKOutput, "TopKSAE")


def test_tanh_l0_approaches_the_count_of_active_latents_as_its_scale_grows():
    a = torch.tensor([[0.0, 0.5, 2.0], [0.0, 0.0, 0.1]], dtype=torch.float64)
    out = Reconstruction(a, a, a, a, torch.ones(3, dtype=torch.float64), nonnegative_codes=True)
    soft = LOSS_TERMS["l0_tanh"](out, (OPTIONS | {"tanh_scale": 1e4}))
    torch.testing.assert_close(soft, (a > 0).sum(1).double())
    assert LOSS_TERMS["l0_tanh"](out, OPTIONS)[1] < 1  # a small activation is penalised less than 1


def test_a_batch_statistic_after_an_unweighted_one_still_trains_through_the_gathered_batch():
    a = torch.rand(16, 4, dtype=torch.float64, requires_grad=True)
    loss = CompositeLoss({"variance": 0.0, "decorrelation": 1.0})
    terms = loss(code(a), global_batch=lambda values: torch.cat([values, values.detach() + 1]), ranks=2)
    terms["total"].backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_two_ranks_optimise_what_one_process_does_with_their_batches(reduction):
    """DDP averages the ranks' gradients: each rank's objective, with the global batch gathered, must average
    to the one-process objective (a per-rank sum scaled by the ranks, a batch statistic counted once)."""
    a = torch.rand(8, 4, dtype=torch.float64)
    loss = CompositeLoss({"lse": 1.0, "variance": 1.0, "decorrelation": 1.0}, reduction=reduction)
    per_rank = [loss(code(rows), global_batch=lambda values: a, ranks=2)["objective"] for rows in a.split(4)]
    torch.testing.assert_close(sum(per_rank) / 2, loss(code(a))["objective"])
