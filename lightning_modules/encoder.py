"""The decoder-free encoder: z = Wx + b, a = act(z), trained by the registry's terms alone."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.base import SparseCoder
from lightning_modules.losses import CompositeLoss
from lightning_modules.outputs import Code

ACTIVATIONS = {"relu": F.relu, "softplus": F.softplus, "identity": lambda z: z}


class DecoderFreeEncoder(SparseCoder):
    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        loss: CompositeLoss,
        activation: str = "relu",
        lr: float = 1e-3,
        unit_norm_rows: bool = False,
        **schedule,
    ):
        if hidden_dim <= 0:
            raise ValueError(f"model.hidden_dim must be > 0, got {hidden_dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown model.activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        super().__init__(loss, lr, **schedule)
        self.save_hyperparameters(ignore=["loss"], logger=False)  # train.py logs the whole config once
        self.linear = nn.Linear(input_dim, hidden_dim)
        self.activation = ACTIVATIONS[activation]
        self.unit_norm_rows = unit_norm_rows
        self.normalize_weights()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.linear(x * self.input_scale)
        return z, self.activation(z)

    def forward(self, x: Tensor) -> Code:
        z, a = self.encode(x)
        return Code(x * self.input_scale, z, a)

    def feature_directions(self) -> Tensor:
        return self.linear.weight

    @torch.no_grad()
    def normalize_weights(self) -> None:
        if self.unit_norm_rows:
            self.linear.weight /= self.linear.weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
