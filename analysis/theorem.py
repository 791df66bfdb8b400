"""Experiment 1: the gradient of the LSE loss w.r.t. each energy a_j is the responsibility r_j.

Takes a real batch through the configured encoder (randomly initialised, or ``ckpt_path``), in
float64, and compares autograd's dL/da with softmax(-a): a scatter against the identity line, and their
difference on its own (rounding) scale.
"""
import sys
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from evaluation.plots import save_figure
from lightning_modules.losses import CompositeLoss
from lightning_modules.outputs import Code


def gradient_vs_responsibility(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd's d(sum_i LSE(a_i))/da through the loss registry, and softmax(-a), for the same a."""
    energies = a.detach().clone().requires_grad_(True)
    CompositeLoss({"lse": 1.0}, reduction="sum")(Code(x=energies, z=energies, a=energies))["objective"].backward()
    return energies.grad, torch.softmax(-energies.detach(), dim=-1)


def pearson_text(correlation: float) -> str:
    """1 − ε at the precision ε has, not twelve digits of 0.99999…"""
    if correlation == 1.0:
        return "1 (exactly, in float64)"
    return f"1 {'-' if correlation < 1 else '+'} {abs(1 - correlation):.1e}"  # rounding can land either side


def figure(grad: torch.Tensor, resp: torch.Tensor, title: str, caption: str):
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
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, -0.01, caption, ha="center", va="top", fontsize=8)
    fig.tight_layout()
    return fig


def load_weights(model, ckpt_path: str) -> None:
    """The checkpoint's weights, or one line naming the model it holds when that is not the configured one."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError:
        held = ", ".join(f"{key}={value}" for key, value in checkpoint.get("hyper_parameters", {}).items())
        built = ", ".join(f"{key}={value}" for key, value in model.hparams.items())
        sys.exit(f"error: ckpt_path={ckpt_path} holds a model with {held}, not the configured "
                 f"{type(model).__name__} with {built}: pass the run's data= and model overrides")


@hydra.main(version_base="1.3", config_path="../conf", config_name="theorem")
def main(cfg: DictConfig) -> None:
    if cfg.ckpt_path and not Path(cfg.ckpt_path).is_file():
        sys.exit(f"error: ckpt_path={cfg.ckpt_path} does not exist")
    torch.manual_seed(cfg.seed)
    model = instantiate(cfg.model, loss=instantiate(cfg.loss)).double()
    weights = f"a randomly initialised encoder (seed {cfg.seed})"
    if cfg.ckpt_path:
        load_weights(model, cfg.ckpt_path)
        weights = f"the encoder of {cfg.ckpt_path}"
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    x = datamodule.splits["val"][0][: cfg.batch_size].double()
    with torch.no_grad():
        _, a = model.encode(x)
    grad, resp = gradient_vs_responsibility(a)
    max_error = (grad - resp).abs().max().item()
    correlation = torch.corrcoef(torch.stack([grad.flatten(), resp.flatten()]))[0, 1].item()
    caption = (f"{x.shape[0]} validation examples x {a.shape[1]} units, float64: "
               f"max |dL/da - r| = {max_error:.1e}, Pearson r = {pearson_text(correlation)}")
    print(f"{weights}: {caption}")
    title = f"Theorem 1 on {weights}, data={HydraConfig.get().runtime.choices.data}"
    for path in save_figure(figure(grad, resp, title, caption), Path(cfg.paths.output_dir) / "theorem"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
