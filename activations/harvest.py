"""Running the model over token sequences and collecting the hooked activations of the harvested
positions: into the on-disk cache (resumable, shard by shard), or as a stream for training without one.

Massive activations (Sun et al., 2024, arXiv 2402.17762): a causal LM's attention-sink tokens, at a window's
first position or after a run of newlines, have residual norms ~100x the median. A handful of them hold
most of a split's variance, so they are left out by a stated rule: a token whose norm exceeds ``cap`` at any
harvested layer, cap = ``max_norm_ratio`` x that layer's median norm over the first harvest batch of train.
Each left-out token is recorded (window, position, token id, norms) so that fidelity can keep it clean."""
import logging
from typing import Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from activations.cache import ActivationCache
from activations.corpus import Sequences
from activations.language_model import run_to_last_hook

log = logging.getLogger(__name__)


def activation_batches(model, modules: dict[int, str], sequences: Sequences, batch_size: int, start: int = 0,
                       caps: dict[int, float] | None = None) -> Iterator[tuple[int, Tensor, dict[int, Tensor], list]]:
    """(sequences done, token ids [n], layer -> activations [n, d], the tokens left out) for each batch of
    sequences, in order, from sequence ``start``: the positions ``sequences.keep`` marks, less those whose
    norm exceeds ``caps[layer]`` at any layer (each left out as {sequence, position, token, norms})."""
    device = next(model.parameters()).device
    for begin in range(start, len(sequences), batch_size):
        end = min(begin + batch_size, len(sequences))
        ids, mask = sequences.input_ids[begin:end], sequences.attention_mask[begin:end]
        captured = run_to_last_hook(model, modules, ids.to(device), mask.to(device))
        keep, left_out = sequences.keep[begin:end].to(device), []
        if caps:
            norms = {layer: out.float().norm(dim=-1) for layer, out in captured.items()}
            over = torch.stack([norms[layer] > caps[layer] for layer in captured]).any(0) & keep
            keep = keep & ~over
            left_out = [{"sequence": begin + int(row), "position": int(col), "token": int(ids[row, col]),
                         "norms": {str(layer): round(float(n[row, col]), 1) for layer, n in norms.items()}}
                        for row, col in over.nonzero().tolist()]
        yield end, ids[keep.cpu()], {layer: out[keep].float().cpu() for layer, out in captured.items()}, left_out


def norm_caps(model, modules: dict[int, str], sequences: Sequences, batch_size: int,
              max_norm_ratio: float | None) -> dict[int, float] | None:
    """Per layer, ``max_norm_ratio`` x the median activation norm over the first harvest batch of
    ``sequences`` (train's): the median of ~4,000 tokens, which the outliers cannot move."""
    if max_norm_ratio is None:
        return None
    _, _, captured, _ = next(activation_batches(model, modules, sequences, batch_size))
    return {layer: max_norm_ratio * float(x.norm(dim=1).median()) for layer, x in captured.items()}


def harvest(cache: ActivationCache, model, modules: dict[int, str], sequences: dict[str, Sequences],
            width: int, batch_size: int, shard_tokens: int, progress: bool = True,
            max_norm_ratio: float | None = None) -> dict:
    """Fill the cache's missing shards, resuming after the last complete one; returns the manifest, with
    the norm caps and each split's left-out tokens."""
    with cache.lock():
        manifest = cache.manifest() or cache.new_manifest(width, batch_size)
        if all(state["complete"] for state in manifest["splits"].values()):
            log.info("activation cache: reusing %s, which another job harvested while this one waited", cache.dir)
            return manifest
        batch_size = manifest["harvest_batch_size"]  # the same batches as before a kill: the same numbers
        if "norm_caps" not in manifest:  # fixed once: a resumed harvest applies the same caps
            caps = norm_caps(model, modules, sequences["train"], batch_size, max_norm_ratio)
            manifest["norm_caps"] = None if caps is None else {str(layer): cap for layer, cap in caps.items()}
        caps = {int(layer): cap for layer, cap in (manifest["norm_caps"] or {}).items()}
        for split, seqs in sequences.items():
            state = manifest["splits"][split]
            if state["complete"]:
                continue
            start = state["shards"][-1]["sequences_end"] if state["shards"] else 0
            done = sum(shard["rows"] for shard in state["shards"])
            if start:
                log.info(f"harvest {split}: resuming at sequence {start}/{len(seqs)} ({done} tokens cached)")
            bar = tqdm(total=seqs.tokens, initial=done, unit="tok", unit_scale=True, desc=f"harvest {split}",
                       disable=not progress, dynamic_ncols=True)
            tokens, acts, pending, left_out = [], {layer: [] for layer in modules}, 0, []
            for end, ids, captured, dropped in activation_batches(model, modules, seqs, batch_size, start, caps):
                left_out += dropped
                tokens.append(ids)
                for layer, x in captured.items():
                    acts[layer].append(x)
                pending += len(ids)
                bar.update(len(ids))
                if pending >= shard_tokens or end == len(seqs):
                    cache.write_shard(manifest, split, torch.cat(tokens).numpy().astype(np.int32),
                                      {layer: torch.cat(xs).numpy() for layer, xs in acts.items()}, end, left_out)
                    tokens, acts, pending, left_out = [], {layer: [] for layer in modules}, 0, []
            bar.close()
            state["complete"] = True
            cache.write_manifest(manifest)
        log.info("activation cache: harvested into %s", cache.dir)
        return manifest
