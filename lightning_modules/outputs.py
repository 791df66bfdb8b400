"""What a model's forward pass returns: one dataclass per kind of model, each adding what its own loss
terms read. A model's ``forward`` names its type in its return annotation; a loss term names the type it
reads (``register(..., reads=)``), so a loss a model cannot feed is refused when the model is built."""
from dataclasses import dataclass, fields

from torch import Tensor


@dataclass
class Code:
    x: Tensor  # the input, scaled as the model trains on it (losses see scaled data)
    z: Tensor  # pre-activations
    a: Tensor  # the code


@dataclass
class Reconstruction(Code):
    x_hat: Tensor  # the decoder's reconstruction of x
    decoder_norms: Tensor  # ||W_dec,i|| per latent
    nonnegative_codes: bool  # the code cannot be negative, whatever was learned: L1 terms skip abs


@dataclass
class JumpReLUOutput(Reconstruction):
    gate: Tensor  # 1[z > theta], differentiable through the model's estimator


@dataclass
class TopKOutput(Reconstruction):
    aux_x_hat: Tensor | None  # the dead latents' reconstruction of the residual; None while none is dead


@dataclass
class MatryoshkaOutput(TopKOutput):
    prefix_x_hats: list[Tensor]  # the reconstruction of each nested prefix of the latents, the last one all of them


@dataclass
class GatedOutput(Reconstruction):
    gate_activity: Tensor  # relu(pi_gate), which the sparsity penalty acts on
    gate_x_hat: Tensor  # the gate path's reconstruction through a frozen copy of the decoder


def extend(out: Code, kind: type, **more) -> Code:
    """``out`` as the richer output ``kind``, with the fields that kind adds."""
    return kind(**{field.name: getattr(out, field.name) for field in fields(out)}, **more)
