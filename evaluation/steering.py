"""Steering a causal LM with one latent of a sparse coder trained on its activations, as Galichin et al.
(arXiv 2503.18878) do in their code (AIRI-Institute/SAE-Reasoning, lm_eval/sae_utils.py), at every position
of the prompt and of each generated token, at the hooked module's output h:

    add    h <- h + c * w_i                           (the latent's direction added)
    clamp  h <- h + (c - f_i(h)) * w_i                (the latent's activation set to c; the SAE's error kept)

with w_i the latent's decoder direction in the LM's units and c = strength * the latent's largest activation
(their ``sae_max_activation * sae_strength``). Strength 0 adds nothing: the clean generation."""
from typing import Callable

import torch
from torch import Tensor

from activations.language_model import hooks

MODES = ("add", "clamp")


def steer(direction: Tensor, amount: float, mode: str, activation: Callable[[Tensor], Tensor] | None = None):
    """``replace(layer, h)`` for ``language_model.hooks``: h moved along ``direction`` as ``mode`` says."""
    if mode not in MODES:
        raise ValueError(f"mode={mode}: choose from {list(MODES)}")

    def replace(layer: int, h: Tensor) -> Tensor:
        w = direction.to(h.device, h.dtype)
        if mode == "add":
            return h + amount * w
        current = activation(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], 1).to(h.dtype)
        return h + (amount - current) * w

    return replace


@torch.no_grad()
def generate(lm, input_ids: Tensor, max_new_tokens: int, module: dict[int, str] | None = None,
             replace: Callable | None = None) -> Tensor:
    """Greedy continuation of ``input_ids`` [1, n] (the new tokens only), with ``replace`` hooked on
    ``module`` (layer -> module name) when given."""
    config = lm.generation_config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, attention_mask=torch.ones_like(input_ids),
                  pad_token_id=pad[0] if isinstance(pad, list) else pad)
    if module is None:
        return lm.generate(input_ids, **kwargs)[0, input_ids.shape[1]:]
    with hooks(lm, module, replace=replace):
        return lm.generate(input_ids, **kwargs)[0, input_ids.shape[1]:]


@torch.no_grad()
def next_token_logits(lm, input_ids: Tensor, module: dict[int, str] | None = None,
                      replace: Callable | None = None) -> Tensor:
    """The logits of the token after ``input_ids`` [1, n], steered where ``replace`` is given."""
    if module is None:
        return lm(input_ids).logits[0, -1]
    with hooks(lm, module, replace=replace):
        return lm(input_ids).logits[0, -1]
