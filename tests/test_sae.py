import pytest
import pytorch_lightning as pl
import torch

from datamodules.gaussian_mixture import GaussianMixtureDataModule
from lightning_modules.encoder import DecoderFreeEncoder
from lightning_modules.losses import LOSS_TERMS, CompositeLoss
from lightning_modules.sae import BatchTopKSAE, GatedSAE, JumpReLUSAE, MatryoshkaSAE, SparseAutoencoder, TopKSAE

OPTIONS = dict(eps=1e-6, bounded_variance=False, tanh_scale=4.0)
MSE_L1 = {"mse": 1.0, "l1": 1e-2}


def batch(n=32, d=10, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model", [
    SparseAutoencoder(10, 24, CompositeLoss(MSE_L1)),
    SparseAutoencoder(10, 24, CompositeLoss(MSE_L1), tied=True),
    JumpReLUSAE(10, 24, CompositeLoss({"mse": 1.0, "l0": 1e-2})),
    TopKSAE(10, 24, CompositeLoss({"mse": 1.0, "auxk": 1 / 32}), k=4),
    BatchTopKSAE(10, 24, CompositeLoss({"mse": 1.0, "auxk": 1 / 32}), k=4),
    MatryoshkaSAE(10, 24, CompositeLoss({"matryoshka": 1.0, "auxk": 1 / 32}), k=4, prefix_fractions=[0.25, 0.5]),
    GatedSAE(10, 24, CompositeLoss({"mse": 1.0, "gate_l1": 1e-2, "gate_aux": 1.0})),
], ids=["relu", "tied", "jumprelu", "topk", "batchtopk", "matryoshka", "gated"])
def test_shapes_and_every_parameter_gets_a_gradient(model):
    out = model(batch())
    assert out.a.shape == (32, 24) and out.x_hat.shape == (32, 10)
    assert out.nonnegative_codes and (out.a >= 0).all()  # the L1 terms skip abs on its word
    model.loss(out)["total"].backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_tied_sae_shares_the_encoder_weight():
    tied = SparseAutoencoder(10, 24, CompositeLoss(MSE_L1), tied=True)
    assert tied.decoder_weight().data_ptr() == tied.encoder.weight.data_ptr()
    assert sum(p.numel() for p in tied.parameters()) == 10 * 24 + 24 + 10


def test_jumprelu_forward_is_hard_gated_and_theta_learns_through_the_surrogate():
    model = JumpReLUSAE(10, 24, CompositeLoss({"mse": 1.0, "l0": 1.0}), threshold=0.5, tau=0.5, estimator="sigmoid")
    x = batch()
    out = model(x)
    z, theta = out.z, model.theta()
    assert torch.equal(out.a, torch.where(z > theta, z, torch.zeros_like(z)))
    assert torch.equal(out.gate, (z > theta).float())
    LOSS_TERMS["l0"](out, OPTIONS).sum().backward()
    assert model.threshold_param.grad.abs().sum() > 0
    assert (model.threshold_param.grad <= 0).all()  # a larger threshold can only close gates


def test_topk_keeps_exactly_k_nonzeros():
    torch.manual_seed(0)  # an initialisation where every example has at least k positive pre-activations
    model = TopKSAE(10, 24, CompositeLoss({"mse": 1.0, "auxk": 1 / 32}), k=5)
    z, a = model.encode(batch(n=64))
    assert ((z > 0).sum(dim=1) >= 5).all()  # enough positive pre-activations for the claim to apply
    assert ((a != 0).sum(dim=1) == 5).all()
    kth = z.topk(5, dim=1).values[:, -1:]
    assert torch.equal(a, torch.where(z >= kth, z, torch.zeros_like(z)))


def test_auxk_is_zero_until_latents_are_dead():
    model = TopKSAE(10, 24, CompositeLoss({"mse": 1.0, "auxk": 1 / 32}), k=2, dead_after=64)
    x = batch()
    model.train()
    assert LOSS_TERMS["auxk"](model(x), OPTIONS).abs().sum() == 0
    model.examples_since_fired[:10] = 1000  # ten latents have not fired for 1000 examples
    out = model(x)
    assert out.aux_x_hat is not None and LOSS_TERMS["auxk"](out, OPTIONS).sum() > 0


def test_l1_decnorm_equals_an_independent_computation():
    model = SparseAutoencoder(10, 24, CompositeLoss({"mse": 1.0, "l1_decnorm": 1.0}))
    with torch.no_grad():
        model.W_dec.mul_(torch.linspace(0.5, 3.0, 24)[:, None])  # unequal row norms
    out = model(batch())
    expected = sum(out.a[:, i] * torch.linalg.vector_norm(model.W_dec[i]) for i in range(24))
    torch.testing.assert_close(LOSS_TERMS["l1_decnorm"](out, OPTIONS), expected)


def test_l1_terms_take_magnitudes_of_a_code_that_can_be_negative():
    model = JumpReLUSAE(10, 24, CompositeLoss({"mse": 1.0, "l1": 1.0}), threshold_param="linear")
    with torch.no_grad():
        model.threshold_param.fill_(-0.5)  # a linear theta learned below 0 passes z in (-0.5, 0)
    out = model(batch())
    assert not out.nonnegative_codes and (out.a < 0).any()
    torch.testing.assert_close(LOSS_TERMS["l1"](out, OPTIONS), out.a.abs().sum(-1))
    torch.testing.assert_close(LOSS_TERMS["l1_decnorm"](out, OPTIONS),
                               (out.a.abs() * out.decoder_norms).sum(-1))


def test_unit_norm_decoder_is_kept_after_a_step():
    model = SparseAutoencoder(10, 24, CompositeLoss(MSE_L1), unit_norm_decoder=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model.loss(model(batch()))["total"].backward()
    optimizer.step()
    model.normalize_weights()
    torch.testing.assert_close(model.W_dec.norm(dim=1), torch.ones(24))


def test_gradient_clip_val_bounds_the_global_norm_of_each_step_s_gradient(tmp_path):
    class GradientNorms(pl.Callback):
        """The gradient each optimiser step used (after clipping, which follows Lightning's hooks)."""
        def __init__(self):
            self.norms = []

        def on_train_start(self, trainer, pl_module):
            def after_step(optimizer, args, kwargs):
                self.norms.append(float(torch.cat([p.grad.flatten() for p in pl_module.parameters()]).norm()))

            trainer.optimizers[0].register_step_post_hook(after_step)

    def norms(clip):
        torch.manual_seed(0)
        model = SparseAutoencoder(32, 48, CompositeLoss(MSE_L1), gradient_clip_val=clip)
        recorder = GradientNorms()
        pl.Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, limit_val_batches=0, callbacks=[recorder], default_root_dir=tmp_path,
                   ).fit(model, datamodule=GaussianMixtureDataModule(input_dim=32, batch_size=64))
        return recorder.norms

    assert max(norms(None)) > 0.5  # so that a clip at 0.5 acts
    clipped = norms(0.5)
    assert len(clipped) == 20 and max(clipped) <= 0.5 + 1e-5


@pytest.mark.parametrize("build, message", [
    (lambda: DecoderFreeEncoder(10, 24, CompositeLoss({"mse": 1.0, "lse": 1.0})),
     "needs \\[.*'x_hat'\\] \\(a Reconstruction\\)"),
    (lambda: TopKSAE(10, 24, CompositeLoss({"mse": 1.0}), k=25), "model.k must be in"),
    (lambda: JumpReLUSAE(10, 24, CompositeLoss({"mse": 1.0}), tau=0), "tau"),
])
def test_model_and_loss_that_do_not_fit_are_rejected(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_batchtopk_keeps_k_per_example_on_average_and_its_threshold_gives_that_l0_at_evaluation():
    torch.manual_seed(0)
    model = BatchTopKSAE(10, 64, CompositeLoss({"mse": 1.0}), k=5, threshold_decay=0.9).double()
    data = [batch(128, seed=seed).double() for seed in range(60)]
    for x in data:  # training forward passes only: the threshold follows the batches' cut-off
        a = model(x).a
        assert int((a > 0).sum()) == 5 * 128
        assert (a > 0).sum(1).float().std() > 0  # a batch budget, not k per example
    model.eval()
    l0 = torch.cat([(model(x).a > 0).sum(1) for x in data]).double().mean()
    assert abs(float(l0) - 5) < 0.5


def test_matryoshka_loss_sums_the_errors_of_its_nested_prefixes():
    model = MatryoshkaSAE(10, 24, CompositeLoss({"matryoshka": 1.0}), k=6, prefix_fractions=[1 / 6, 0.5]).double()
    x = batch().double()
    out = model(x)
    weight, expected = model.decoder_weight(), 0.0
    for end in (4, 12, 24):
        x_hat = out.a[:, :end] @ weight[:, :end].T + model.b_dec
        expected = expected + ((x - x_hat) ** 2).sum(-1)
    torch.testing.assert_close(LOSS_TERMS["matryoshka"](out, OPTIONS), expected)
    torch.testing.assert_close(out.prefix_x_hats[-1], out.x_hat)


def test_gated_auxiliary_loss_trains_the_gate_and_not_the_decoder():
    model = GatedSAE(10, 24, CompositeLoss({"mse": 1.0, "gate_l1": 1e-2, "gate_aux": 1.0})).double()
    out = model(batch().double())
    LOSS_TERMS["gate_aux"](out, OPTIONS).sum().backward()
    assert model.W_dec.grad is None  # the decoder is frozen in this term (b_dec learns only as the input shift)
    assert model.encoder.weight.grad.abs().sum() > 0 and model.encoder.bias.grad.abs().sum() > 0
    x = batch().double()
    pi_gate, pi_mag = model.gates(x)
    assert torch.equal(model(x).a > 0, (pi_gate > 0) & (pi_mag > 0))


@pytest.mark.parametrize("parametrisation", ["log", "linear"])
def test_rectangle_estimator_matches_the_expected_loss_gradient_in_theta(parametrisation):
    """z ~ N(0, 1): E[1[z > theta]] = 1 - Phi(theta) and E[z 1[z > theta]] = phi(theta), so the expected L0
    and the expected (linear) activation have known derivatives in theta, checked by finite differences."""
    theta0, h = 0.5, 1e-4
    model = JumpReLUSAE(1, 1, CompositeLoss({"mse": 1.0, "l0": 1.0}), threshold=theta0, estimator="rectangle",
                        bandwidth=0.05, threshold_param=parametrisation).double()
    z = torch.randn(2_000_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected_l0 = lambda t: 1 - torch.special.ndtr(torch.tensor(t, dtype=torch.float64))  # noqa: E731
    expected_a = lambda t: torch.exp(-torch.tensor(t, dtype=torch.float64) ** 2 / 2) / (2 * torch.pi) ** 0.5  # noqa: E731
    for estimate, exact in [(model.gate(z).mean(), expected_l0), (model.activate(z).mean(), expected_a)]:
        model.zero_grad()
        estimate.backward()
        dtheta = model.threshold_param.grad / (theta0 if parametrisation == "log" else 1.0)  # d theta / d p
        finite_difference = (exact(theta0 + h) - exact(theta0 - h)) / (2 * h)
        assert float(dtheta) == pytest.approx(float(finite_difference), abs=0.01)
    z.requires_grad_(True)
    model.gate(z).sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))  # the L0 penalty reaches theta only


def test_the_preactivation_has_the_values_and_gradients_of_w_enc_times_x_minus_b_dec_plus_b_enc():
    """(b_dec reaches it through a zero-valued bias term, not through the batch's input gradient)"""
    torch.manual_seed(0)
    model = SparseAutoencoder(6, 5, CompositeLoss({"mse": 1.0}, reduction="mean")).double()
    with torch.no_grad():
        model.b_dec.normal_()
        model.input_scale.fill_(1.7)
    x = torch.randn(4, 6, dtype=torch.float64)
    ours = model.preactivation(x)
    reference = model.encoder(x * model.input_scale - model.b_dec)
    torch.testing.assert_close(ours, reference)
    weights = torch.randn_like(ours)
    grads = [torch.autograd.grad((z * weights).sum(), [model.encoder.weight, model.encoder.bias, model.b_dec])
             for z in (model.preactivation(x), model.encoder(x * model.input_scale - model.b_dec))]
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs)


def test_topk_decodes_its_k_latents_as_a_matmul_over_all_of_them_would():
    """Same reconstruction and same gradient to every parameter (a's other entries are zeros the scatter
    in activate does not differentiate), in the training forward pass (one topk for code and decode) and
    in decode_scaled of a given code."""
    torch.manual_seed(0)
    model = TopKSAE(6, 10, CompositeLoss({"mse": 1.0}, reduction="mean"), k=3).double()
    x = torch.randn(2, 4, 6, dtype=torch.float64)  # leading batch dimensions, as LM batches have
    weights = torch.randn(2, 4, 6, dtype=torch.float64)
    results = []
    for reconstruct in (lambda: model(x.flatten(0, 1)).x_hat.view_as(x),
                        lambda: model.decode_scaled(model.encode(x)[1]),
                        lambda: SparseAutoencoder.decode_scaled(model, model.encode(x)[1])):
        x_hat = reconstruct()
        results.append((x_hat, torch.autograd.grad((x_hat * weights).sum(), list(model.parameters()))))
    (dense, dense_grads) = results.pop()
    for sparse, sparse_grads in results:
        torch.testing.assert_close(sparse, dense)
        for ours, theirs in zip(sparse_grads, dense_grads):
            torch.testing.assert_close(ours, theirs)
