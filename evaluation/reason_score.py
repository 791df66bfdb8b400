"""ReasonScore (Galichin et al. 2025, arXiv 2503.18878), as its authors' code computes it
(AIRI-Institute/SAE-Reasoning, extraction/compute_score.py):

- every occurrence of a reasoning word's token ids widens to the tokens from one before each of its tokens to
  two after (``BEFORE``, ``AFTER``: the code's ``expand_range`` 1,2; two secondary accounts of the paper's text
  say 2 before and 3 after, ``reason_window=[2,3]`` in conf/features.yaml); W_r is the union of word group r's
  windows, D+ the union over groups, D- every other scored token;
- a latent's activation is first multiplied by its decoder row's norm (the authors call SAELens's
  ``fold_W_dec_norm()`` before scoring), so that a latent with a free decoder norm is scored by what it adds
  to the reconstruction, not by how its code and decoder share a scale (``decoder_norms``);
- mu_i,r, mu_i+ and mu_i- are the means of latent i's activation over W_r, D+ and D- (zeros included);
- p_i,r = mu_i,r / (sum_r' mu_i,r' + eps), H_i = -sum_r p_i,r ln p_i,r / ln |R| (1 when |R| = 1);
- ReasonScore_i = mu_i+ / (sum_j mu_j+ + eps) * H_i^alpha - mu_i- / (sum_j mu_j- + eps), alpha 0.7;
- the paper keeps the latents whose score is above the 0.997 quantile over latents (``above_quantile``).

The normalised entropy rewards a latent that fires on many of the words rather than on one; the sums over
latents j make the two terms shares of all latents' activation. Scored tokens are the harvested ones (the
activation cache's: no special tokens, no window's first position unless the run kept them). The word set
is the authors' reason_tokens.json, in conf/features.yaml.

One difference is deliberate: in the authors' code a match in a row's first columns shrinks the windows of
later matches of the same variant in that row; here every match gets its full window."""
from dataclasses import dataclass

import torch
from torch import Tensor

BEFORE, AFTER = 1, 2  # the window around each matched token (the authors' expand_range 1,2)
ALPHA, EPS = 0.7, 1e-12


def word_groups(words, tokenizer) -> dict[str, list[list[int]]]:
    """Each word's variants (as token ids, no special tokens), grouped by the word lower-cased and stripped."""
    groups: dict[str, list[list[int]]] = {}
    for word in words:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if ids:
            groups.setdefault(word.strip().lower(), []).append(ids)
    return groups


def windows(input_ids: Tensor, groups: dict[str, list[list[int]]], before: int = BEFORE, after: int = AFTER) -> Tensor:
    """[groups, n, L]: the tokens of each group's windows in token rows [n, L] (exact token-id matches), from
    ``before`` tokens before a match to ``after`` tokens after its last token."""
    n, length = input_ids.shape
    masks = torch.zeros(len(groups), n, length, dtype=torch.bool)
    for g, variants in enumerate(groups.values()):
        for ids in variants:
            m = len(ids)
            if m > length:
                continue
            starts = (input_ids.unfold(1, m, 1) == torch.tensor(ids)).all(-1)  # [n, L - m + 1]
            for shift in range(-before, m + after):  # each matched token's window, its m tokens' together
                lo, hi = max(shift, 0), min(length, length - m + 1 + shift)
                masks[g, :, lo:hi] |= starts[:, lo - shift:hi - shift]
    return masks


@dataclass
class ReasonSums:
    """Per latent, the sums of its activation over each W_r, D+ and D-, and the token counts they average."""
    per_group: Tensor  # [h, R]
    plus: Tensor  # [h]
    minus: Tensor  # [h]
    group_tokens: Tensor  # [R]
    plus_tokens: int
    minus_tokens: int

    @classmethod
    def zeros(cls, latents: int, groups: int) -> "ReasonSums":
        return cls(torch.zeros(latents, groups, dtype=torch.float64), torch.zeros(latents, dtype=torch.float64),
                   torch.zeros(latents, dtype=torch.float64), torch.zeros(groups, dtype=torch.float64), 0, 0)

    def update(self, codes: Tensor, in_groups: Tensor) -> None:
        """``codes`` [n, h] of n scored tokens; ``in_groups`` [n, R]: which groups' windows hold each token."""
        plus = in_groups.any(-1)
        codes, in_groups = codes.double(), in_groups.double()
        self.per_group += codes.T @ in_groups
        self.plus += codes[plus].sum(0)
        self.minus += codes[~plus].sum(0)
        self.group_tokens += in_groups.sum(0)
        self.plus_tokens += int(plus.sum())
        self.minus_tokens += int((~plus).sum())


def reason_score(sums: ReasonSums, alpha: float = ALPHA, eps: float = EPS) -> Tensor:
    """[h] ReasonScore in float64 (the formula above)."""
    per_group = sums.per_group / sums.group_tokens.clamp_min(1)
    plus = sums.plus / max(sums.plus_tokens, 1)
    minus = sums.minus / max(sums.minus_tokens, 1)
    p = per_group / (per_group.sum(1, keepdim=True) + eps)
    entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)
    groups = per_group.shape[1]
    normalised = entropy / torch.log(torch.tensor(float(groups), dtype=torch.float64)) if groups > 1 \
        else torch.ones_like(entropy)
    return plus / (plus.sum() + eps) * normalised ** alpha - minus / (minus.sum() + eps)


def decoder_norms(model) -> Tensor | None:
    """[h] each latent's decoder row norm (what ``fold_W_dec_norm`` multiplies its activation by), or None for a
    model without a decoder (the decoder-free encoder: there is nothing to fold)."""
    if not hasattr(model, "decoder_weight"):
        return None
    return model.decoder_weight().detach().T.norm(dim=1).double()


def above_quantile(scores: Tensor, quantile: float) -> list[int]:
    """The latents whose score is above the ``quantile`` of all latents' scores, highest first (the paper: 0.997)."""
    threshold = torch.quantile(scores.double(), quantile)
    chosen = torch.nonzero(scores > threshold).squeeze(1)
    return chosen[scores[chosen].argsort(descending=True)].tolist()
