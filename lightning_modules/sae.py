"""The standard SAE family the decoder-free encoder is measured against.

    SparseAutoencoder  a = relu(W_enc (x - b_dec) + b_enc),  x_hat = W_dec a + b_dec   (+ l1 or l1_decnorm)
    JumpReLUSAE        a = z * 1[z > theta], theta learned; a rectangle STE (or a sigmoid surrogate) trains theta
    TopKSAE            keep the k largest activations; AuxK lets dead latents model the residual
    BatchTopKSAE       the k*B largest over the batch in training; a learned threshold (a JumpReLU) at evaluation
    MatryoshkaSAE      BatchTopK whose nested dictionary prefixes each reconstruct the input
    GatedSAE           a gate path decides which latents fire, a magnitude path (same directions) how much

With ``sparse_below`` > 0, a training batch whose code has at most that fraction of its entries active trains
sparse (lightning_modules/sparse.py): ``z`` and ``a`` of the output are then SparseCodes on the same entries,
and only the encoder's forward matmul is dense. Values and gradients are the dense step's (tests/test_sparse.py).
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.base import SparseCoder
from lightning_modules.losses import CompositeLoss
from lightning_modules.outputs import GatedOutput, JumpReLUOutput, MatryoshkaOutput, Reconstruction, TopKOutput, extend
from lightning_modules.sparse import SparseCode, selected_linear, sparse_decode, top_k


class SparseAutoencoder(SparseCoder):
    saelens_architecture: str | None = "standard"  # its name in SAELens's format (analysis/export.py); None: none
    def __init__(self, input_dim: int, hidden_dim: int, loss: CompositeLoss, lr: float = 1e-3,
                 tied: bool = False, unit_norm_decoder: bool = False, sparse_below: float = 0.0, **schedule):
        if hidden_dim <= 0:
            raise ValueError(f"model.hidden_dim must be > 0, got {hidden_dim}")
        if not 0 <= sparse_below <= 1:
            raise ValueError(f"model.sparse_below is a fraction of the code's entries in [0, 1], got {sparse_below}")
        super().__init__(loss, lr, **schedule)
        self.save_hyperparameters(ignore=["loss"], logger=False)  # train.py logs the whole config once
        self.encoder = nn.Linear(input_dim, hidden_dim)
        self.b_dec = nn.Parameter(torch.zeros(input_dim))
        # one row per latent, as the encoder's weight (and SAELens's W_dec): a sparse step reads whole rows.
        # tied: the decoder is the encoder's weight, the decoder-free encoder's parameter count plus b_dec
        self.W_dec = None if tied else nn.Parameter(self.encoder.weight.detach().clone())
        self.unit_norm_decoder = unit_norm_decoder
        self.sparse_below = sparse_below  # 0: every training step dense
        self.normalize_weights()

    def inference_threshold(self) -> Tensor | None:
        """The per-latent threshold its code applies at inference, where it has one (exported with it)."""
        return None

    def decoder_weight(self) -> Tensor:
        """[input_dim, hidden_dim]: column i is latent i's direction."""
        return self.decoder_rows().T

    def decoder_rows(self) -> Tensor:
        """[hidden_dim, input_dim]: row i is latent i's direction."""
        return self.encoder.weight if self.W_dec is None else self.W_dec

    def activate(self, z: Tensor) -> Tensor:
        return F.relu(z)

    def nonnegative_codes(self) -> bool:
        """Whether activate can return no negative value, whatever was learned (the L1 terms then skip abs)."""
        return True

    def preactivation(self, x: Tensor) -> Tensor:
        """W_enc (x - b_dec) + b_enc."""
        centred, bias = self.centred_input_and_bias(x)
        return F.linear(centred, self.encoder.weight, bias)

    def centred_input_and_bias(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x - b_dec with no gradient to b_dec, and the bias b_enc + W_enc (b_dec - b_dec): zero added, whose
        gradient is b_dec's, -W_enc^T sum_batch dz, a matrix-vector product. Through x - b_dec autograd would
        take it as the input gradient of the batch matmul (one of the step's six); through the folded bias
        b_enc - W_enc b_dec it would also add a rank-one [latents x inputs] gradient to W_enc (1 GB at paper
        width, each step)."""
        b_dec = self.b_dec.detach()
        return x * self.input_scale - b_dec, self.encoder.bias + self.encoder.weight.detach() @ (b_dec - self.b_dec)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.preactivation(x)
        return z, self.activate(z)

    def decode(self, a: Tensor) -> Tensor:
        """The reconstruction in the raw data's units."""
        return self.decode_scaled(a) / self.input_scale

    def decode_scaled(self, a: Tensor) -> Tensor:
        return a @ self.decoder_rows() + self.b_dec

    def reconstruction(self, x: Tensor, z: Tensor, a: Tensor, x_hat: Tensor) -> Reconstruction:
        """What the loss terms read, in the scaled space the model trains in."""
        return Reconstruction(x * self.input_scale, z, a, x_hat, self.decoder_rows().norm(dim=1),
                              self.nonnegative_codes())

    def code_and_reconstruction(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The code of pre-activations z and its reconstruction (TopK decodes both from one topk)."""
        a = self.activate(z)
        return a, self.decode_scaled(a)

    def forward(self, x: Tensor) -> Reconstruction:
        z = self.preactivation(x)
        entries = self.sparse_entries(z.detach()) if self.training and self.sparse_below else None
        if entries is not None:
            return self.sparse_forward(x, z.detach(), self.selected(x, entries))
        return self.reconstruction(x, z, *self.code_and_reconstruction(z))

    def sparse_entries(self, z: Tensor) -> SparseCode | None:
        """The entries a sparse step computes, with the pre-activations there (no gradient); None where the
        batch's code is denser than ``sparse_below``."""
        return entries_where(z > 0, z, self.sparse_below)

    def selected(self, x: Tensor, entries: SparseCode) -> SparseCode:
        """The pre-activations at ``entries``, differentiable in the encoder's parameters and b_dec."""
        weight = self.encoder.weight
        values = entries.values.to(weight.dtype)  # bfloat16 under autocast; the sparse products run in the weights'
        centred, bias = self.centred_input_and_bias(x)
        return entries.with_values(selected_linear(centred, weight, bias, entries, values))

    def activate_entries(self, preactivations: SparseCode) -> SparseCode:
        """``activate`` at the entries only."""
        return preactivations.with_values(F.relu(preactivations.values))

    def sparse_forward(self, x: Tensor, z: Tensor, preactivations: SparseCode) -> Reconstruction:
        """The output of a sparse step: z (dense, no gradient) picked the entries; ``preactivations`` holds
        their differentiable values."""
        code = self.activate_entries(preactivations)
        x_hat = sparse_decode(code, self.decoder_rows()) + self.b_dec
        return self.reconstruction(x, preactivations, code, x_hat)

    def feature_directions(self) -> Tensor:
        return self.decoder_rows()

    @torch.no_grad()
    def normalize_weights(self) -> None:
        if self.unit_norm_decoder:
            rows = self.decoder_rows()
            rows /= rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def entries_where(mask: Tensor, z: Tensor, sparse_below: float) -> SparseCode | None:
    """The entries of ``mask`` with ``z``'s values there, unless more than ``sparse_below`` of them are set."""
    if torch.count_nonzero(mask) > sparse_below * mask.numel():
        return None
    flat = mask.view(-1).nonzero().squeeze(1)
    return SparseCode.from_flat(flat, z.view(-1)[flat], z.shape)


def rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLURectangle(torch.autograd.Function):
    """z * 1[z > theta]; d/dz = 1[z > theta], d/dtheta := -(theta / eps) K((z - theta) / eps), K the rectangle
    kernel (Rajamanoharan et al. 2024): an estimate of the expected loss's gradient in theta."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        kernel = rectangle((z - theta) / ctx.bandwidth)
        grad_theta = (-grad * theta / ctx.bandwidth * kernel).sum_to_size(theta.shape)  # summed over the batch
        return grad * (z > theta).to(z.dtype), grad_theta, None


class StepRectangle(torch.autograd.Function):
    """1[z > theta]; d/dz := 0, d/dtheta := -(1 / eps) K((z - theta) / eps): the L0 penalty reaches theta only."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, theta = ctx.saved_tensors
        kernel = rectangle((z - theta) / ctx.bandwidth)
        return torch.zeros_like(z), (-grad / ctx.bandwidth * kernel).sum_to_size(theta.shape), None


class JumpReLUSAE(SparseAutoencoder):
    """a = z * 1[z > theta], theta learned per latent. The forward pass is exact; the gradient to theta comes
    from one of two estimators:
      rectangle  the JumpReLU paper's straight-through estimator, a rectangle kernel of bandwidth eps, to theta only
      sigmoid    the gradient of sigmoid((z - theta) / tau), to theta and to z
    (With the rectangle, the L0 penalty reaches the encoder only through theta, which Adam moves by about lr per
    step, so a short run barely responds to lambda; the sigmoid also pushes z.)"""
    saelens_architecture = "jumprelu"
    ESTIMATORS = ("sigmoid", "rectangle")
    PARAMETRISATIONS = ("log", "linear")

    def __init__(self, *args, threshold: float = 0.1, tau: float = 0.1, estimator: str = "rectangle",
                 bandwidth: float = 0.05, threshold_param: str = "log", threshold_lr_scale: float = 1.0, **kwargs):
        if threshold <= 0 or tau <= 0 or bandwidth <= 0 or threshold_lr_scale <= 0:
            raise ValueError(f"model.threshold, tau, bandwidth and threshold_lr_scale must be > 0, got {threshold}, "
                             f"{tau}, {bandwidth}, {threshold_lr_scale}")
        if estimator not in self.ESTIMATORS or threshold_param not in self.PARAMETRISATIONS:
            raise ValueError(f"model.estimator must be one of {self.ESTIMATORS} and model.threshold_param one of "
                             f"{self.PARAMETRISATIONS}, got {estimator!r}, {threshold_param!r}")
        super().__init__(*args, **kwargs)
        if self.sparse_below and estimator != "rectangle":
            raise ValueError("model.sparse_below needs model.estimator=rectangle: the sigmoid's gradient reaches every "
                             "latent, so its step cannot be sparse")
        initial = torch.full((self.hparams.hidden_dim,), float(threshold))
        self.threshold_param = nn.Parameter(initial.log() if threshold_param == "log" else initial)
        self.tau, self.estimator, self.bandwidth, self.parametrisation = tau, estimator, bandwidth, threshold_param
        self.threshold_lr_scale = threshold_lr_scale

    def parameter_groups(self) -> list[dict]:
        """theta at ``threshold_lr_scale`` x the learning rate: Adam moves a parameter by about its learning rate
        a step whatever lambda is, so at lr 1e-3 a run of a few hundred steps moves log theta by a few tenths
        at most and L0 cannot follow lambda (docs/models.md)."""
        rest = [p for name, p in self.named_parameters() if name != "threshold_param"]
        return [{"params": rest}, {"params": [self.threshold_param], "lr": self.lr * self.threshold_lr_scale}]

    def theta(self) -> Tensor:
        return self.threshold_param.exp() if self.parametrisation == "log" else self.threshold_param

    def inference_threshold(self) -> Tensor:
        return self.theta()

    def nonnegative_codes(self) -> bool:
        return self.parametrisation == "log"  # a linear theta can learn to go below 0 and pass negative z

    def sparse_entries(self, z: Tensor) -> SparseCode | None:
        """The active entries and those within the rectangle's reach below theta, whose gradients reach theta."""
        return entries_where(z > self.theta() - self.bandwidth / 2, z, self.sparse_below)

    def activate_entries(self, preactivations: SparseCode) -> SparseCode:
        theta = self.theta()[preactivations.columns]
        return preactivations.with_values(JumpReLURectangle.apply(preactivations.values, theta, self.bandwidth))

    def gate(self, z: Tensor | SparseCode) -> Tensor | SparseCode:
        """Forward: exactly 1[z > theta]; backward: the estimator's."""
        if isinstance(z, SparseCode):
            theta = self.theta()[z.columns]
            return z.with_values(StepRectangle.apply(z.values, theta, self.bandwidth))
        theta = self.theta()
        if self.estimator == "rectangle":
            return StepRectangle.apply(z, theta, self.bandwidth)
        soft = torch.sigmoid((z - theta) / self.tau)
        return (z > theta).to(z.dtype) + (soft - soft.detach())  # exactly 0 forward: the gate stays hard

    def activate(self, z: Tensor) -> Tensor:
        if self.estimator == "rectangle":
            return JumpReLURectangle.apply(z, self.theta(), self.bandwidth)
        return z * self.gate(z)

    def forward(self, x: Tensor) -> JumpReLUOutput:
        out = super().forward(x)
        return extend(out, JumpReLUOutput, gate=self.gate(out.z))


class TopKSAE(SparseAutoencoder):
    saelens_architecture = "topk"

    def __init__(self, *args, k: int = 8, k_aux: int = 64, dead_after: int = 50_000, **kwargs):
        super().__init__(*args, **kwargs)
        hidden_dim = self.hparams.hidden_dim
        if not 0 < k <= hidden_dim:
            raise ValueError(f"model.k must be in [1, hidden_dim={hidden_dim}], got {k}")
        if k_aux <= 0 or dead_after <= 0:
            raise ValueError(f"model.k_aux and model.dead_after must be > 0, got {k_aux}, {dead_after}")
        self.k, self.k_aux, self.dead_after = k, k_aux, dead_after
        self.register_buffer("examples_since_fired", torch.zeros(hidden_dim))

    def activate(self, z: Tensor) -> Tensor:
        return self.top_k(z)[0]

    def top_k(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The k largest of relu(z), exactly k non-zeros whenever k pre-activations are positive: the code,
        and its values and indices."""
        values, indices = F.relu(z).topk(self.k, dim=-1)
        return torch.zeros_like(z).scatter(-1, indices, values), values, indices

    def code_and_reconstruction(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """The code and its reconstruction, both from one topk over the pre-activations."""
        a, values, indices = self.top_k(z)
        return a, self.gather_decode(values, indices) + self.b_dec

    def decode_scaled(self, a: Tensor) -> Tensor:
        """Only the k latents a row can hold: k decoder columns gathered per example, k / hidden_dim of a
        matmul over every latent (the zeros past a row's positives add nothing)."""
        values, indices = a.topk(self.k, dim=-1)
        return self.gather_decode(values, indices) + self.b_dec

    def gather_decode(self, values: Tensor, indices: Tensor) -> Tensor:
        """sum_j values[..., j] * W_dec[indices[..., j]]."""
        weight = self.decoder_rows()
        # under autocast (bf16-mixed) the values come in bfloat16; embedding_bag wants the weight's type
        rows = F.embedding_bag(indices.reshape(-1, indices.shape[-1]), weight,
                               per_sample_weights=values.reshape(-1, values.shape[-1]).to(weight.dtype), mode="sum")
        return rows.view(*values.shape[:-1], -1)

    def sparse_entries(self, z: Tensor) -> SparseCode | None:
        """Each row's k largest pre-activations (relu then leaves the same code as top_k's)."""
        if self.k > self.sparse_below * z.shape[-1]:
            return None
        values, indices = top_k(z, self.k)
        return SparseCode.from_rows(indices, values, z.shape[-1])

    def forward(self, x: Tensor) -> TopKOutput:
        out = super().forward(x)
        if isinstance(out, TopKOutput):  # a sparse step's, aux included
            return out
        self.count_examples_since_fired(len(x), (out.a > 0).any(dim=0))
        dead = self.dead()
        aux_x_hat = None
        if dead.any():  # the dead latents' top k_aux pre-activations reconstruct the residual
            k_aux = min(self.k_aux, int(dead.sum()))
            values, indices = F.relu(out.z.masked_fill(~dead, float("-inf"))).topk(k_aux, dim=-1)
            aux_x_hat = self.gather_decode(values, indices)
        return extend(out, TopKOutput, aux_x_hat=aux_x_hat)

    def sparse_forward(self, x: Tensor, z: Tensor, preactivations: SparseCode) -> TopKOutput:
        out = super().sparse_forward(x, z, preactivations)
        self.count_examples_since_fired(len(x), out.a.fired())
        dead = self.dead().nonzero().squeeze(1)
        aux_x_hat = None
        if len(dead):  # as in the dense step, from the dead columns of z only
            values, picked = z[:, dead].topk(min(self.k_aux, len(dead)), dim=-1)
            aux = self.activate_entries(self.selected(x, SparseCode.from_rows(dead[picked], values, z.shape[-1])))
            aux_x_hat = sparse_decode(aux, self.decoder_rows())
        return extend(out, TopKOutput, aux_x_hat=aux_x_hat)

    def count_examples_since_fired(self, examples: int, fired: Tensor) -> None:
        if self.training:
            with torch.no_grad():
                self.examples_since_fired += examples
                self.examples_since_fired[fired] = 0

    def dead(self) -> Tensor:
        return self.examples_since_fired > self.dead_after


class BatchTopKSAE(TopKSAE):
    """Training keeps the k * B largest activations of the batch, so examples share a budget of k on average.
    The running mean of the smallest activation kept becomes a threshold, and evaluation is a JumpReLU at it:
    its L0 is measured, not set (dictionary_learning's and SAELens's BatchTopK)."""
    saelens_architecture = "jumprelu"  # as it is evaluated

    def __init__(self, *args, threshold_decay: float = 0.999, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 <= threshold_decay < 1:
            raise ValueError(f"model.threshold_decay must be in [0, 1), got {threshold_decay}")
        self.threshold_decay = threshold_decay
        self.register_buffer("threshold", torch.tensor(-1.0))  # -1: no training batch seen yet

    def inference_threshold(self) -> Tensor:
        return self.threshold.clamp_min(0).expand(self.hparams.hidden_dim)

    # a batch's top k * B, and the threshold at evaluation, leave rows with more than k latents: all of them decode
    decode_scaled = SparseAutoencoder.decode_scaled
    code_and_reconstruction = SparseAutoencoder.code_and_reconstruction

    def activate(self, z: Tensor) -> Tensor:
        positive = F.relu(z)
        if not self.training:
            return positive * (z > self.threshold)
        values, indices = positive.flatten().topk(min(self.k * len(z), z.numel()))
        self.update_threshold(values)
        return torch.zeros_like(positive.flatten()).scatter(0, indices, values).view_as(z)

    def sparse_entries(self, z: Tensor) -> SparseCode | None:
        if self.k > self.sparse_below * z.shape[-1]:
            return None
        values, flat = z.flatten().topk(min(self.k * len(z), z.numel()))
        self.update_threshold(F.relu(values))
        flat, order = flat.sort()
        return SparseCode.from_flat(flat, values[order], z.shape)

    @torch.no_grad()
    def update_threshold(self, kept: Tensor) -> None:
        """The running mean of the smallest positive activation a training batch kept."""
        kept = kept[kept > 0]
        if len(kept):
            smallest = kept.min()
            first = self.threshold < 0
            self.threshold.copy_(smallest if first else self.threshold_decay * self.threshold
                                 + (1 - self.threshold_decay) * smallest)


class MatryoshkaSAE(BatchTopKSAE):
    """Nested dictionaries: the first ``prefix_fractions[0]`` of the latents reconstruct the input alone, the
    first ``prefix_fractions[1]`` too, and so on up to all of them; the ``matryoshka`` term sums their errors."""

    def __init__(self, *args, prefix_fractions: list[float] = (0.25, 0.5), **kwargs):
        super().__init__(*args, **kwargs)
        if not all(0 < fraction <= 1 for fraction in prefix_fractions):
            raise ValueError(f"model.prefix_fractions must lie in (0, 1], got {list(prefix_fractions)}")
        hidden_dim = self.hparams.hidden_dim
        self.prefixes = sorted({max(1, round(f * hidden_dim)) for f in prefix_fractions} | {hidden_dim})

    def forward(self, x: Tensor) -> MatryoshkaOutput:
        out = super().forward(x)
        if isinstance(out.a, SparseCode):  # each prefix's entries decode on their own; the last prefix is x_hat
            rows, code = self.decoder_rows(), out.a
            prefix_x_hats = [sparse_decode(code.with_values(code.values * (code.columns < end)), rows) + self.b_dec
                             for end in self.prefixes[:-1]]
            return extend(out, MatryoshkaOutput, prefix_x_hats=[*prefix_x_hats, out.x_hat])
        rows, x_hat, start, prefix_x_hats = self.decoder_rows(), self.b_dec.expand_as(out.x), 0, []
        for end in self.prefixes:  # each prefix adds its own latents to the previous reconstruction
            x_hat = x_hat + out.a[:, start:end] @ rows[start:end]
            prefix_x_hats.append(x_hat)
            start = end
        return extend(out, MatryoshkaOutput, prefix_x_hats=prefix_x_hats)


class GatedSAE(SparseAutoencoder):
    """Gated SAE (Rajamanoharan et al. 2024): pi_gate = W (x - b_dec) + b_gate decides which latents fire,
    pi_mag = exp(r_mag) * W (x - b_dec) + b_mag how much, a = 1[pi_gate > 0] * relu(pi_mag). The sparsity
    penalty (``gate_l1``) acts on relu(pi_gate), which the ``gate_aux`` term makes reconstruct x through a
    frozen copy of the decoder, so that the gate path learns what the gate needs."""
    saelens_architecture = None  # SAELens's gated SAE differs (no r_mag scaling of a shared matrix's export here)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.sparse_below:
            raise ValueError("model.sparse_below is not available for the gated SAE: its gate_aux term decodes the "
                             "dense relu(pi_gate); set model.sparse_below=0")
        self.r_mag = nn.Parameter(torch.zeros(self.hparams.hidden_dim))
        self.b_mag = nn.Parameter(torch.zeros(self.hparams.hidden_dim))

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """pi_gate and pi_mag."""
        centred = x * self.input_scale - self.b_dec
        shared = centred @ self.encoder.weight.T
        return shared + self.encoder.bias, shared * self.r_mag.exp() + self.b_mag

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pi_gate, pi_mag = self.gates(x)
        return pi_gate, (pi_gate > 0).to(pi_mag.dtype) * F.relu(pi_mag)

    def forward(self, x: Tensor) -> GatedOutput:
        pi_gate, a = self.encode(x)
        activity = F.relu(pi_gate)
        frozen = activity @ self.decoder_rows().detach() + self.b_dec.detach()
        out = self.reconstruction(x, pi_gate, a, self.decode_scaled(a))
        return extend(out, GatedOutput, gate_activity=activity, gate_x_hat=frozen)
