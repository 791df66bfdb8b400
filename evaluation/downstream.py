"""Downstream fidelity: the model's own loss when the hooked activation is replaced, at the harvested
positions, by its reconstruction (or a baseline's), by zeros, or by the train mean. Positions that are not
harvested (padding, special tokens, the tokens the norm rule left out) keep their clean activation.

Causal LM: next-token cross-entropy over the non-padding positions, and KL(clean || spliced) of the
next-token distributions. Sentence encoder: 1 - cos(mean-pooled embedding, the clean one), whose clean
value is 0. In both, recovered = (L_zero - L_spliced) / (L_zero - L_clean) (SAELens's and
dictionary_learning's CE loss recovered), and the same with the mean ablation in place of the zero one;
its standard error is the jackknife's over windows (a window's tokens are not independent draws).
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


def recovered_with_se(clean: Tensor, spliced: Tensor, ablated: Tensor, counts: Tensor) -> tuple[float, float]:
    """The recovered fraction of per-window loss sums [windows] (float64), and its jackknife standard error:
    sqrt((n - 1) / n * sum_i (theta_(-i) - mean theta_(-))^2), theta_(-i) the fraction without window i."""
    totals = [float(v.sum()) for v in (clean, spliced, ablated, counts)]
    value = recovered_fraction(*(total / totals[3] for total in totals[:3]))
    n = len(counts)
    if n < 2:
        return value, float("nan")
    rest = [total - v for total, v in zip(totals, (clean, spliced, ablated, counts))]
    c, s, a = (r / rest[3] for r in rest[:3])
    leave_one_out = (a - s) / (a - c)
    return value, float(((n - 1) / n * (leave_one_out - leave_one_out.mean()).square().sum()).sqrt())


@torch.no_grad()
def downstream_fidelity(model, module: dict[int, str], sequences: Sequences,
                        reconstructions: dict[str, Callable[[Tensor], Tensor]], mean: Tensor, causal: bool,
                        batch_size: int = 16, progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """``module``: {layer: name} of the one hooked site; ``reconstructions``: a name ("" for the model's own,
    else a prefix such as "pca_") -> a map of activations [n, d] to their reconstructions in the same units.
    ``progress`` is called with the windows done after each batch."""
    device = next(model.parameters()).device
    variants = {f"{name}spliced": fn for name, fn in reconstructions.items()}
    variants |= {"zero_ablated": torch.zeros_like, "mean_ablated": lambda x: mean.to(x).expand_as(x)}
    per_window = {name: [] for name in ("clean", "count", *variants)}
    kl = {name: 0.0 for name in reconstructions}
    for begin in range(0, len(sequences), batch_size):
        ids = sequences.input_ids[begin:begin + batch_size].to(device)
        mask = sequences.attention_mask[begin:begin + batch_size].to(device)
        keep = sequences.keep[begin:begin + batch_size].to(device)
        loss, n, clean = sequence_losses(model, ids, mask, causal, None)
        per_window["clean"].append(loss.double().cpu())
        per_window["count"].append(n.double().cpu())
        for name, replacement in variants.items():
            def splice(layer: int, output: Tensor, replacement=replacement) -> Tensor:
                output = output.clone()
                output[keep] = replacement(output[keep]).to(output.dtype)
                return output

            with hooks(model, module, replace=splice):
                loss, _, out = sequence_losses(model, ids, mask, causal, None if causal else clean)
            per_window[name].append(loss.double().cpu())
            if causal and name.endswith("spliced"):  # KL(clean || spliced) per predicted token
                valid = (mask[:, 1:] * mask[:, :-1]).bool()
                kl[name.removesuffix("spliced")] += float(
                    (F.kl_div(out, clean, log_target=True, reduction="none").sum(-1) * valid).sum())
        if progress is not None:
            progress(min(begin + batch_size, len(sequences)))
    sums = {name: torch.cat(parts) for name, parts in per_window.items()}
    count = float(sums["count"].sum())
    prefix, kind = ("ce", "ce_loss") if causal else ("embedding_loss", "embedding")
    values = {f"{prefix}_{name}": float(total.sum()) / count for name, total in sums.items() if name != "count"}
    values["downstream_windows"], values["downstream_tokens"] = len(sequences), count
    for name in reconstructions:
        for baseline, suffix in (("zero_ablated", ""), ("mean_ablated", "_mean")):
            recovered, se = recovered_with_se(sums["clean"], sums[f"{name}spliced"], sums[baseline], sums["count"])
            values |= {f"{name}{kind}_recovered{suffix}": recovered, f"{name}downstream_recovered{suffix}": recovered,
                       f"{name}{kind}_recovered{suffix}_se": se, f"{name}downstream_recovered{suffix}_se": se}
        if causal:
            values[f"{name}kl_spliced"] = kl[name] / count
    return values
