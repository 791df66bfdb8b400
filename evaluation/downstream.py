"""Downstream fidelity: the model's own loss when the hooked activation is replaced, at the harvested
positions, by its reconstruction, by zeros, or by the train mean.

Causal LM: next-token cross-entropy over the non-padding positions, and KL(clean || spliced) of the
next-token distributions. Sentence encoder: 1 - cos(mean-pooled embedding, the clean one), whose clean
value is 0. In both, recovered = (L_zero - L_spliced) / (L_zero - L_clean) (SAELens's and
dictionary_learning's CE loss recovered), and the same with the mean ablation in place of the zero one.
"""
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from activations.corpus import Sequences
from activations.language_model import hooks


def sequence_losses(model, input_ids: Tensor, attention_mask: Tensor, causal: bool,
                    clean: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sequence loss sums and counts, and the output (log-probabilities or pooled embeddings)."""
    if causal:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        targets, valid = input_ids[:, 1:], (attention_mask[:, 1:] * attention_mask[:, :-1]).bool()
        # flattened to [tokens, vocabulary]: over the [batch, vocabulary, time] layout float32 drifts more
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets) * valid
        return ce.sum(1), valid.sum(1), logits.log_softmax(-1)
    hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.double()
    mask = attention_mask.unsqueeze(-1).double()
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # all-MiniLM-L6-v2's pooling
    loss = 1 - F.cosine_similarity(pooled, pooled if clean is None else clean, dim=-1)
    return loss, torch.ones_like(loss), pooled


def recovered_fraction(clean: float, spliced: float, ablated: float) -> float:
    """1 when splicing costs nothing, 0 when it costs as much as the ablation; nan if the ablation costs nothing."""
    return (ablated - spliced) / (ablated - clean) if ablated != clean else float("nan")


@torch.no_grad()
def downstream_fidelity(model, module: dict[int, str], sequences: Sequences, reconstruct: Callable[[Tensor], Tensor],
                        mean: Tensor, causal: bool, batch_size: int = 16) -> dict[str, float]:
    """``module``: {layer: name} of the one hooked site; ``reconstruct`` maps activations [n, d] to
    their reconstructions in the same units."""
    device = next(model.parameters()).device
    variants = {"spliced": reconstruct, "zero_ablated": torch.zeros_like,
                "mean_ablated": lambda x: mean.to(x).expand_as(x)}
    sums = {name: 0.0 for name in ("clean", *variants)}
    kl_sum, count = 0.0, 0.0
    for begin in range(0, len(sequences), batch_size):
        ids = sequences.input_ids[begin:begin + batch_size].to(device)
        mask = sequences.attention_mask[begin:begin + batch_size].to(device)
        keep = sequences.keep[begin:begin + batch_size].to(device)
        loss, n, clean = sequence_losses(model, ids, mask, causal, None)
        sums["clean"] += float(loss.sum())
        count += float(n.sum())
        for name, replacement in variants.items():
            def splice(layer: int, output: Tensor, replacement=replacement) -> Tensor:
                output = output.clone()
                output[keep] = replacement(output[keep]).to(output.dtype)
                return output

            with hooks(model, module, replace=splice):
                loss, _, out = sequence_losses(model, ids, mask, causal, None if causal else clean)
            sums[name] += float(loss.sum())
            if causal and name == "spliced":  # KL(clean || spliced) per predicted token
                valid = (mask[:, 1:] * mask[:, :-1]).bool()
                kl_sum += float((F.kl_div(out, clean, log_target=True, reduction="none").sum(-1) * valid).sum())
    losses = {name: total / count for name, total in sums.items()}
    prefix = "ce" if causal else "embedding_loss"
    values = {f"{prefix}_{name}": value for name, value in losses.items()}
    recovered, recovered_mean = (recovered_fraction(losses["clean"], losses["spliced"], losses[baseline])
                                 for baseline in ("zero_ablated", "mean_ablated"))
    kind = "ce_loss" if causal else "embedding"
    values.update({f"{kind}_recovered": recovered, f"{kind}_recovered_mean": recovered_mean,
                   "downstream_recovered": recovered, "downstream_recovered_mean": recovered_mean})
    if causal:
        values["kl_spliced"] = kl_sum / count
    return values
