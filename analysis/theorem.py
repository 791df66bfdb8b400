"""Experiment 1: the gradient of the LSE loss w.r.t. each energy a_j is the responsibility r_j.

Takes a real batch through the configured encoder (randomly initialised, or ``ckpt_path``), in
float64, and compares autograd's dL/da with softmax(-a) on a scatter against the identity line.
"""
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="theorem")
def main(cfg: DictConfig) -> None:
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    model = instantiate(cfg.model, loss=instantiate(cfg.loss)).double()
    if cfg.ckpt_path:
        model.load_state_dict(torch.load(cfg.ckpt_path, map_location="cpu")["state_dict"])
    x = datamodule.splits["val"][0][: cfg.batch_size].double()
    with torch.no_grad():
        _, a = model.encode(x)
    grad, resp = gradient_vs_responsibility(a)
    max_error = (grad - resp).abs().max().item()
    correlation = torch.corrcoef(torch.stack([grad.flatten(), resp.flatten()]))[0, 1].item()
    caption = (f"{x.shape[0]} examples x {a.shape[1]} units, float64: "
               f"max |dL/da - r| = {max_error:.2e}, Pearson r = {correlation:.12f}")
    print(caption)

    figure, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(resp.flatten(), grad.flatten(), s=3, alpha=0.4, label="(r_j, dL/da_j)")
    top = max(resp.max().item(), grad.max().item()) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=1, label="identity")
    ax.set_xlabel("responsibility r_j = softmax(-a)_j")
    ax.set_ylabel("autograd dL_LSE / da_j")
    ax.set_title("LSE gradient = responsibility", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    figure.text(0.5, -0.02, caption, ha="center", va="top", fontsize=7, wrap=True)
    for path in save_figure(figure, Path(cfg.paths.output_dir) / "theorem"):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
