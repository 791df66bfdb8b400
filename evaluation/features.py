"""What each latent of a trained sparse coder responds to, measured by streaming a split's codes chunk by
chunk: its firing count, its top-activating positions, a histogram of its activations, and its activation at
chosen positions. Memory is bounded by the latents times what is kept per latent (``top``, the bins, the
positions asked for), never by the number of tokens."""
import numpy as np
import torch
from torch import Tensor

HISTOGRAM_BINS = 24  # log-spaced over the positive activations, per latent, from its largest down 1e-4 of it


class TopActivations:
    """Per latent, the ``top`` largest activations and where they are, merged chunk by chunk."""

    def __init__(self, latents: int, top: int):
        self.values = torch.zeros(latents, top)
        self.positions = torch.full((latents, top), -1, dtype=torch.long)
        self.fired = torch.zeros(latents, dtype=torch.long)
        self.tokens = 0

    def update(self, codes: Tensor, start: int) -> None:
        """``codes``: [n, h] for the positions start .. start + n - 1."""
        codes = codes.float()
        self.fired += (codes > 0).sum(0)
        k = min(self.values.shape[1], len(codes))
        values, rows = codes.T.topk(k, dim=1)  # [h, k]
        merged_values = torch.cat([self.values, values], dim=1)
        merged_positions = torch.cat([self.positions, rows + start], dim=1)
        best, order = merged_values.topk(self.values.shape[1], dim=1)
        self.values, self.positions = best, merged_positions.gather(1, order)
        self.tokens += len(codes)

    def kept(self) -> tuple[Tensor, Tensor]:
        """Top values and positions, with the positions of non-firing entries set to -1."""
        positions = torch.where(self.values > 0, self.positions, torch.full_like(self.positions, -1))
        return self.values.clamp_min(0), positions


class Histograms:
    """Per latent, counts of its positive activations in log-spaced bins below its largest activation
    (known from a first pass), so that every latent's histogram has the same shape whatever its scale."""

    def __init__(self, largest: Tensor, bins: int = HISTOGRAM_BINS):
        top = largest.clamp_min(1e-12).double()
        exponents = torch.linspace(-4, 0, bins + 1, dtype=torch.float64)
        self.edges = top[:, None] * 10 ** exponents[None, :]  # [h, bins + 1]
        self.counts = torch.zeros(len(largest), bins, dtype=torch.long)

    def update(self, codes: Tensor) -> None:
        codes = codes.double()
        for i in range(1, self.edges.shape[1]):  # bins x [n, h] comparisons: no [n, h, bins] tensor
            inside = (codes > self.edges[:, i - 1]) & (codes <= self.edges[:, i] * (1 + 1e-9))
            self.counts[:, i - 1] += inside.sum(0)


def stream_codes(model, activations: Tensor, chunk_size: int = 4096):
    """(start, codes) for each chunk of a split's activations, in order."""
    for start in range(0, len(activations), chunk_size):
        yield start, model.codes(activations[start:start + chunk_size], chunk_size)


def activations_at(model, activations: Tensor, wanted: Tensor, chunk_size: int = 4096) -> Tensor:
    """[h, ...]: latent i's activation at each position of ``wanted[i]`` ([h, ...] positions in the split,
    -1 for none: 0 there), gathered chunk by chunk from the (latent, position) pairs needed, so that memory
    grows with the pairs (latents x top x context), not with the tokens."""
    latents = wanted.shape[0]
    valid = wanted >= 0
    latent_of = torch.arange(latents).view(-1, *([1] * (wanted.dim() - 1))).expand_as(wanted)
    flat_positions, flat_latents = wanted[valid], latent_of[valid]
    order = flat_positions.argsort()
    flat_positions, flat_latents = flat_positions[order], flat_latents[order]
    gathered = torch.zeros(len(flat_positions))
    bounds = np.searchsorted(flat_positions.numpy(), np.arange(0, len(activations) + chunk_size, chunk_size))
    for chunk, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi > lo:
            start = chunk * chunk_size
            codes = model.codes(activations[start:start + chunk_size], chunk_size).float()
            gathered[lo:hi] = codes[flat_positions[lo:hi] - start, flat_latents[lo:hi]]
    result = torch.zeros(wanted.shape)
    unsorted = torch.empty_like(gathered)
    unsorted[order] = gathered
    result[valid] = unsorted
    return result
