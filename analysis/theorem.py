"""Experiment 1: the gradient of the LSE loss w.r.t. each energy a_j is the responsibility r_j.

Takes a real batch through the configured encoder (randomly initialised, or ``ckpt_path``), in
float64, and compares autograd's dL/da with softmax(-a) on a scatter against the identity line.
"""
import sys
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from evaluation.plots import save_figure
from lightning_modules.losses import CompositeLoss


def gradient_vs_responsibility(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd's d(sum_i LSE(a_i))/da through the loss registry, and softmax(-a), for the same a."""
    energies = a.detach().clone().requires_grad_(True)
    CompositeLoss({"lse": 1.0}, reduction="sum")({"a": energies})["objective"].backward()
    return energies.grad, torch.softmax(-energies.detach(), dim=-1)


def pearson_text(correlation: float) -> str:
    """1 − ε at the precision ε has, not twelve digits of 0.99999…"""
    return "1 (exactly, in float64)" if correlation == 1.0 else f"1 - {1 - correlation:.1e}"


def figure(grad: torch.Tensor, resp: torch.Tensor, weights: str, caption: str):
    """The gradient against the responsibility on the identity line, and their difference, on axes fitted to
    the data: at float64 the difference is rounding, visible only on its own scale."""
    r, g = resp.flatten().numpy(), grad.flatten().numpy()
    residual = g - r
    fig, (agreement, difference) = plt.subplots(1, 2, figsize=(9, 4.2))
    low, high = min(r.min(), g.min()), max(r.max(), g.max())
    margin = 0.03 * (high - low)
    agreement.scatter(r, g, s=3, alpha=0.4, label="(r_j, dL/da_j), one per example and unit")
    agreement.plot([low - margin, high + margin], [low - margin, high + margin], "k--", lw=1, label="identity")
    agreement.set(xlim=(low - margin, high + margin), ylim=(low - margin, high + margin),
                  xlabel="responsibility r_j = softmax(-a)_j", ylabel="autograd dL_LSE / da_j")
    agreement.set_title("LSE gradient against responsibility", fontsize=10)
    agreement.legend(loc="upper left", fontsize=7)
    difference.scatter(r, residual, s=3, alpha=0.4, color="tab:orange")
    bound = 1.2 * max(np.abs(residual).max(), np.finfo(np.float64).tiny)
    difference.axhline(0, color="black", lw=0.8)
    difference.set(xlim=(r.min() - margin, r.max() + margin), ylim=(-bound, bound),
                   xlabel="responsibility r_j", ylabel="dL/da_j - r_j")
    difference.set_title("residual (float64 rounding scale)", fontsize=10, pad=14)
    fig.suptitle(f"Theorem 1 on {weights}", fontsize=10)
    fig.text(0.5, -0.01, caption, ha="center", va="top", fontsize=8)
    fig.tight_layout()
    return fig


@hydra.main(version_base="1.3", config_path="../conf", config_name="theorem")
def main(cfg: DictConfig) -> None:
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        sys.exit(f"error: ckpt_path={cfg.ckpt_path} does not exist")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model, loss=instantiate(cfg.loss)).double()
    weights = f"a randomly initialised encoder (seed {cfg.seed})"
    if cfg.ckpt_path:
        model.load_state_dict(torch.load(cfg.ckpt_path, map_location="cpu")["state_dict"])
        weights = f"the encoder of {cfg.ckpt_path}"
    x = datamodule.splits["val"][0][: cfg.batch_size].double()
    with torch.no_grad():
        _, a = model.encode(x)
    grad, resp = gradient_vs_responsibility(a)
    max_error = (grad - resp).abs().max().item()
    correlation = torch.corrcoef(torch.stack([grad.flatten(), resp.flatten()]))[0, 1].item()
    caption = (f"{x.shape[0]} validation examples x {a.shape[1]} units, float64: "
               f"max |dL/da - r| = {max_error:.1e}, Pearson r = {pearson_text(correlation)}")
    print(f"{weights}: {caption}")
    for path in save_figure(figure(grad, resp, weights, caption), Path(cfg.paths.output_dir) / "theorem"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
