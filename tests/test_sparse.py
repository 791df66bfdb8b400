"""The sparse training step (lightning_modules/sparse.py) against the dense one, in float64: the same loss terms,
the same gradient for every parameter, the same buffers, on both sides of ``sparse_below``."""
import copy

import pytest
import torch

from lightning_modules.losses import CompositeLoss
from lightning_modules.sae import BatchTopKSAE, GatedSAE, JumpReLUSAE, MatryoshkaSAE, SparseAutoencoder, TopKSAE
from lightning_modules.sparse import SparseCode, top_k

INPUT, LATENTS = 12, 64


def models() -> dict:
    """Each model with every loss term that reads its code, with its encoder bias set so that its code is
    sparse (a few percent of the entries, as at LM width after warm-up)."""
    relu = dict(mse=1.0, l1_decnorm=0.3, l1=0.1, l0_tanh=0.2)
    made = {
        "relu": SparseAutoencoder(INPUT, LATENTS, CompositeLoss(relu)),
        "relu+variance": SparseAutoencoder(INPUT, LATENTS, CompositeLoss({**relu, "variance": 0.1})),
        "tied": SparseAutoencoder(INPUT, LATENTS, CompositeLoss(relu), tied=True),
        "jumprelu": JumpReLUSAE(INPUT, LATENTS, CompositeLoss({"mse": 1.0, "l0": 0.5}), threshold=0.1,
                                bandwidth=0.2),
        "topk": TopKSAE(INPUT, LATENTS, CompositeLoss({"mse": 1.0, "auxk": 1 / 32}), k=3, k_aux=5, dead_after=10),
        "batchtopk": BatchTopKSAE(INPUT, LATENTS, CompositeLoss({"mse": 1.0, "auxk": 1 / 32}), k=3, dead_after=10),
        "matryoshka": MatryoshkaSAE(INPUT, LATENTS, CompositeLoss({"matryoshka": 1.0, "auxk": 1 / 32}), k=3,
                                    prefix_fractions=[0.25, 0.5], dead_after=10),
    }
    for model in made.values():
        with torch.no_grad():
            model.encoder.bias.fill_(-0.95)  # about 5% of the entries above 0 for inputs of unit variance
            model.W_dec.mul_(torch.linspace(0.5, 2.0, LATENTS)[:, None]) if model.W_dec is not None else None
        model.double().train()
    return made


def pair(model, sparse_below: float):
    """The dense model and a copy that steps sparse below ``sparse_below``."""
    sparse = copy.deepcopy(model)
    sparse.sparse_below = sparse_below
    return model, sparse


def step(model, x: torch.Tensor):
    """One training step's output, loss terms and every parameter's gradient."""
    model.zero_grad()
    out = model(x)
    terms = model.loss(out)
    terms["objective"].backward()
    return out, terms, {name: p.grad.clone() for name, p in model.named_parameters()}


def inputs(seed: int, batch: int = 48) -> torch.Tensor:
    return torch.randn(batch, INPUT, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(models()))
def test_a_sparse_step_gives_the_dense_step_s_losses_gradients_and_buffers(name):
    dense, sparse = pair(models()[name], sparse_below=1.0)
    for seed in range(3):  # TopK's latents die after 10 examples unseen: the later steps exercise AuxK
        x = inputs(seed)
        dense_out, dense_terms, dense_grads = step(dense, x)
        sparse_out, sparse_terms, sparse_grads = step(sparse, x)
        assert isinstance(sparse_out.a, SparseCode) and isinstance(dense_out.a, torch.Tensor)
        torch.testing.assert_close(sparse_out.a.dense(), dense_out.a, rtol=0, atol=1e-12)
        torch.testing.assert_close(sparse_out.x_hat, dense_out.x_hat, rtol=0, atol=1e-12)
        for term in dense_terms:
            torch.testing.assert_close(sparse_terms[term], dense_terms[term], rtol=1e-12, atol=1e-12, msg=term)
        for parameter, grad in dense_grads.items():
            assert grad.abs().sum() > 0, parameter
            torch.testing.assert_close(sparse_grads[parameter], grad, rtol=1e-10, atol=1e-12, msg=parameter)
        for buffer, value in dense.named_buffers():
            torch.testing.assert_close(dict(sparse.named_buffers())[buffer], value, rtol=0, atol=0, msg=buffer)
    if name == "topk":
        assert dense.dead().any(), "the test did not reach AuxK"


def test_the_switch_falls_back_to_the_dense_step_above_its_density():
    model = models()["relu"]
    x = inputs(0)
    density = (model.preactivation(x) > 0).double().mean().item()
    assert 0.01 < density < 0.2
    _, below = pair(model, sparse_below=density * 1.01)
    _, above = pair(model, sparse_below=density * 0.99)
    assert isinstance(below(x).a, SparseCode)
    assert isinstance(above(x).a, torch.Tensor)  # denser than allowed: the dense step, so the same values
    below.eval()
    assert isinstance(below(x).a, torch.Tensor)  # evaluation is always dense


def test_topk_s_switch_is_k_over_the_latents():
    model = models()["topk"]  # k = 3 of 64 latents
    assert isinstance(pair(model, 3 / 64)[1](inputs(0)).a, SparseCode)
    assert isinstance(pair(model, 2 / 64)[1](inputs(0)).a, torch.Tensor)


def test_loss_curves_of_sparse_and_dense_training_agree_over_200_steps():
    dense, sparse = pair(models()["relu"], sparse_below=0.5)
    curves = {}
    for label, model in (("dense", dense), ("sparse", sparse)):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        curve = []
        for seed in range(200):
            optimizer.zero_grad()
            out = model(inputs(seed))
            objective = model.loss(out)["objective"]
            objective.backward()
            optimizer.step()
            curve.append(objective.item())
            if label == "sparse":
                assert isinstance(out.a, SparseCode)
        curves[label] = torch.tensor(curve, dtype=torch.float64)
    assert curves["dense"][-1] < 0.9 * curves["dense"][0]  # it trained
    torch.testing.assert_close(curves["sparse"], curves["dense"], rtol=1e-9, atol=0)


@pytest.mark.parametrize("shape,k", [((40, 256), 7), ((40, 256), 32), ((40, 100), 5), ((3, 8), 8)])
def test_top_k_is_torch_topk(shape, k):
    z = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    values, indices = top_k(z, k)
    expected = z.topk(k, dim=-1)
    torch.testing.assert_close(values.sort(dim=-1, descending=True).values, expected.values, rtol=0, atol=0)
    assert torch.equal(indices.sort(dim=-1).values, expected.indices.sort(dim=-1).values)
    assert torch.equal(z.gather(1, indices), values)


def test_models_whose_step_cannot_be_sparse_refuse_the_option():
    with pytest.raises(ValueError, match="estimator=rectangle"):
        JumpReLUSAE(INPUT, LATENTS, CompositeLoss({"mse": 1.0, "l0": 0.5}), estimator="sigmoid", sparse_below=0.05)
    with pytest.raises(ValueError, match="gated"):
        GatedSAE(INPUT, LATENTS, CompositeLoss({"mse": 1.0, "gate_l1": 1e-2, "gate_aux": 1.0}), sparse_below=0.05)
    with pytest.raises(ValueError, match="sparse_below"):
        SparseAutoencoder(INPUT, LATENTS, CompositeLoss({"mse": 1.0}), sparse_below=2.0)
