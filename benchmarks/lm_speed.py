"""Speed of the LM pipeline, as ratios of speeds measured side by side (higher is better, 1.0 = parity).

    python -m benchmarks.lm_speed

harvest_vs_bare   harvesting all-MiniLM-L6-v2's last block (so stopping the forward pass early saves
                  nothing) into a fresh on-disk cache, tokens/s, against a bare loop that runs the same
                  model on the same batches with no hooks and no writing.
cache_vs_memory   training an SAE (384 -> 3072, batch 4096, mse + l1_decnorm, Adam) with Lightning,
                  steps/s, reading the on-disk cache (ShardBatches) against the same rows from an
                  in-memory tensor (TensorBatches).
lm_vs_bare        the same Lightning fit from the cache against a bare PyTorch loop over the same
                  module, loss and optimiser on in-memory batches.
verified_cache_vs_memory  cache_vs_memory with the cost of opening the cache added: every shard of the
                  split checked against its CRC-32 (activations/cache.py), which a run pays once, here
                  charged to the timed steps (most of one epoch).

Variants run interleaved, round by round; a ratio is the median over rounds. The last line is JSON.
"""
import json
import logging
import os
import statistics
import tempfile
import time
import warnings

import numpy as np
import pytorch_lightning as pl
import torch

from activations.cache import ActivationCache
from activations.harvest import harvest
from runtime.allocator import reuse_freed_memory
from benchmarks.speed import Clock
from datamodules.lm_activations import ActivationDataModule
from datamodules.tensor_batches import TensorBatches
from lightning_modules.losses import CompositeLoss
from lightning_modules.sae import SparseAutoencoder

HIDDEN, BATCH, STEPS, WARMUP, ROUNDS = 3072, 4096, 12, 2, 3
HARVEST_TOKENS = 12000  # per round

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("datamodules.lm_activations").setLevel(logging.WARNING)
warnings.filterwarnings("ignore")


def harvest_seconds(dm: ActivationDataModule, root: str) -> float:
    cache = ActivationCache(tempfile.mkdtemp(dir=root), dm.cache_key())  # a fresh cache every round
    start = time.perf_counter()
    harvest(cache, dm.lm, dm.modules, {"train": dm.sequences["train"]}, dm.input_dim, dm.harvest_batch_size,
            dm.shard_tokens, progress=False)
    return time.perf_counter() - start


def bare_forward_seconds(dm: ActivationDataModule) -> float:
    seqs, size = dm.sequences["train"], dm.harvest_batch_size
    start = time.perf_counter()
    with torch.inference_mode():
        for begin in range(0, len(seqs), size):
            dm.lm(input_ids=seqs.input_ids[begin:begin + size], attention_mask=seqs.attention_mask[begin:begin + size])
    return time.perf_counter() - start


def open_seconds(dm: ActivationDataModule) -> float:
    """Opening the train split's cache as a run does: every shard and its tokens read once and checked."""
    cache = ActivationCache(dm.cache_dir, dm.cache_key())
    start = time.perf_counter()
    manifest = cache.manifest()
    cache.open(manifest, "train", dm.layer)
    cache.tokens(manifest, "train")
    return time.perf_counter() - start


def sae() -> SparseAutoencoder:
    torch.manual_seed(0)
    return SparseAutoencoder(384, HIDDEN, CompositeLoss({"mse": 1.0, "l1_decnorm": 5.0}, reduction="mean"), lr=5e-5)


def lightning_seconds(train_batches) -> float:
    clock = Clock(WARMUP)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=STEPS, limit_val_batches=0, num_sanity_val_steps=0,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, callbacks=[clock], default_root_dir=tmp)
        trainer.fit(sae(), train_dataloaders=train_batches)
    return clock.seconds_per_step * (STEPS - WARMUP)


def bare_seconds(x: torch.Tensor) -> float:
    module = sae()
    optimizer = torch.optim.Adam(module.parameters(), lr=module.lr)
    index = torch.randperm(len(x))
    for step in range(STEPS):
        if step == WARMUP:
            start = time.perf_counter()
        loss = module.loss(module(x[index[step * BATCH:(step + 1) * BATCH]]))["objective"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    load = os.getloadavg()[0]
    reuse_freed_memory()  # as train.py does
    with tempfile.TemporaryDirectory() as root:
        tokens = {"train": STEPS * BATCH + BATCH, "val": 512, "test": 512}
        train_dm = ActivationDataModule(model="minilm", layer=3, input_dim=384, max_tokens=tokens, cache_dir=root,
                                        batch_size=BATCH, shard_tokens=16384, progress=False)
        train_dm.setup("fit")
        x_memory = torch.from_numpy(np.concatenate(train_dm.train_shards)).float()
        harvest_dm = ActivationDataModule(model="minilm", layer=5, input_dim=384, cache_dir=root, progress=False,
                                          max_tokens={"train": HARVEST_TOKENS, "val": 1, "test": 1})
        harvest_dm.load_lm()
        runs = {
            "harvest into the cache": lambda: harvest_seconds(harvest_dm, root),
            "bare forward, no hooks": lambda: bare_forward_seconds(harvest_dm),
            "Lightning, on-disk cache": lambda: lightning_seconds(train_dm.train_dataloader()),
            "opening the cache, verified": lambda: open_seconds(train_dm),
            "Lightning, in-memory tensor": lambda: lightning_seconds(TensorBatches((x_memory,), BATCH, True)),
            "bare loop, in-memory tensor": lambda: bare_seconds(x_memory),
        }
        times = {name: [] for name in runs}
        for _ in range(ROUNDS):
            for name, run in runs.items():
                times[name].append(run())

    def ratio(slow: str, fast: str) -> float:  # speed of `slow` relative to `fast`
        return statistics.median(f / s for s, f in zip(times[slow], times[fast]))

    ratios = {"harvest_vs_bare": ratio("harvest into the cache", "bare forward, no hooks"),
              "cache_vs_memory": ratio("Lightning, on-disk cache", "Lightning, in-memory tensor"),
              "lm_vs_bare": ratio("Lightning, on-disk cache", "bare loop, in-memory tensor"),
              "verified_cache_vs_memory": statistics.median(
                  memory / (cached + opening) for cached, opening, memory in zip(
                      times["Lightning, on-disk cache"], times["opening the cache, verified"],
                      times["Lightning, in-memory tensor"]))}
    tokens = harvest_dm.sequences["train"].tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} before the run")
    print(f"harvest: {tokens} tokens of all-MiniLM-L6-v2 (d 384, last block) per round; "
          f"SAE 384 -> {HIDDEN}, batch {BATCH}, {STEPS - WARMUP} timed steps; {ROUNDS} rounds")
    print(f"{'variant':32s} {'median s':>9s}")
    for name, values in times.items():
        per = f"{tokens / statistics.median(values):8.0f} tok/s" if "harvest" in name or "forward" in name else \
            "" if "opening" in name else f"{(STEPS - WARMUP) / statistics.median(values):8.2f} steps/s"
        print(f"{name:32s} {statistics.median(values):9.2f}  {per}")
    for name, value in ratios.items():
        print(f"{name:20s} {value:.3f}")
    print(json.dumps({name: round(value, 3) for name, value in ratios.items()}))


if __name__ == "__main__":
    main()
