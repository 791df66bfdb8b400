"""Running the model over token sequences and collecting the hooked activations of the harvested
positions: into the on-disk cache (resumable, shard by shard), or as a stream for training without one."""
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


def activation_batches(model, modules: dict[int, str], sequences: Sequences, batch_size: int,
                       start: int = 0) -> Iterator[tuple[int, Tensor, dict[int, Tensor]]]:
    """(sequences done, token ids [n], layer -> activations [n, d]) for each batch of sequences, in
    order, from sequence ``start``: only the positions ``sequences.keep`` marks."""
    device = next(model.parameters()).device
    for begin in range(start, len(sequences), batch_size):
        end = min(begin + batch_size, len(sequences))
        ids, mask = sequences.input_ids[begin:end], sequences.attention_mask[begin:end]
        keep = sequences.keep[begin:end]
        captured = run_to_last_hook(model, modules, ids.to(device), mask.to(device))
        keep_device = keep.to(device)
        yield end, ids[keep], {layer: out[keep_device].float().cpu() for layer, out in captured.items()}


def harvest(cache: ActivationCache, model, modules: dict[int, str], sequences: dict[str, Sequences],
            width: int, batch_size: int, shard_tokens: int, progress: bool = True) -> dict:
    """Fill the cache's missing shards, resuming after the last complete one; returns the manifest."""
    with cache.lock():
        manifest = cache.manifest() or cache.new_manifest(width, batch_size)
        if all(state["complete"] for state in manifest["splits"].values()):
            log.info("activation cache: reusing %s, which another job harvested while this one waited", cache.dir)
            return manifest
        batch_size = manifest["harvest_batch_size"]  # the same batches as before a kill: the same numbers
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
            tokens, acts, pending = [], {layer: [] for layer in modules}, 0
            for end, ids, captured in activation_batches(model, modules, seqs, batch_size, start):
                tokens.append(ids)
                for layer, x in captured.items():
                    acts[layer].append(x)
                pending += len(ids)
                bar.update(len(ids))
                if pending >= shard_tokens or end == len(seqs):
                    cache.write_shard(manifest, split, torch.cat(tokens).numpy().astype(np.int32),
                                      {layer: torch.cat(xs).numpy() for layer, xs in acts.items()}, end)
                    tokens, acts, pending = [], {layer: [] for layer in modules}, 0
            bar.close()
            state["complete"] = True
            cache.write_manifest(manifest)
        log.info("activation cache: harvested into %s", cache.dir)
        return manifest
