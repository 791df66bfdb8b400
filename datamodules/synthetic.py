"""Activations drawn from a known sparse dictionary, through SAELens's generator (``sae_lens.synthetic``, the
one SynthSAEBench is built on): x = Σ_i f_i d_i + b (+ Gaussian noise, which SAELens does not add), with
true features d_i, firing by a Zipfian law, magnitudes per feature, an optional hierarchy (a child fires only
with its parent; siblings may exclude each other) and optional low-rank correlations of firing.

Training batches stream: batch j of epoch e is sampled afresh from a seed of (seed, epoch, j, rank), so no
dataset sits in memory and a resumed run draws exactly the batches an unbroken one would. Validation, test
and the read-out sample of train are fixed draws; test keeps its true feature activations, which the
ground-truth metrics read (evaluation/ground_truth.py). The true dictionary is written into the run folder
(``true_features/``, SAELens's ``SyntheticModel.save`` layout: ``SyntheticModel.load_from_disk`` reads it)."""
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor

from datamodules.resumable import ResumableBatches
from datamodules.tensor_batches import TensorBatches, rank_and_world_size

log = logging.getLogger(__name__)
SPLIT_SEEDS = {"val": 1, "test": 2, "train": 3}  # the fixed draws; training batches use others (see SyntheticBatches)


class SyntheticBatches(ResumableBatches):
    """``batches_per_epoch`` fresh batches an epoch, each a function of (seed, epoch, index, rank)."""

    def __init__(self, sample, batches_per_epoch: int, batch_size: int, seed: int, rank: int = 0):
        self.sample, self.batches_per_epoch, self.batch_size = sample, batches_per_epoch, batch_size
        self.seed, self.rank = seed, rank

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batches(self, skip: int):
        for index in range(skip, self.batches_per_epoch):
            x, features = self.sample(self.batch_size, (self.seed, self.epoch, index, self.rank))
            yield x, features.argmax(1)


class SyntheticDataModule(pl.LightningDataModule):
    def __init__(self, num_features: int = 512, input_dim: int = 64, firing_probability: dict | None = None,
                 mean_firing_magnitudes: dict | float = 1.0, std_firing_magnitudes: dict | float = 0.0,
                 hierarchy: dict | None = None, correlation: dict | None = None, orthogonalization: dict | None = None,
                 bias: float = 0.5, noise: float = 0.0, dictionary_seed: int = 0, batches_per_epoch: int = 500,
                 n_val: int = 4096, n_test: int = 16384, readout: int = 8192, batch_size: int = 1024,
                 eval_batch_size: int = 4096, save_dir: str | None = None, seed: int = 0):
        super().__init__()
        self.config = model_config(num_features, input_dim, firing_probability, mean_firing_magnitudes,
                                   std_firing_magnitudes, hierarchy, correlation, orthogonalization, bias,
                                   dictionary_seed)
        checks = [(noise >= 0, f"data.noise must be >= 0 (the std of Gaussian noise added to x), got {noise}"),
                  (min(batches_per_epoch, n_val, n_test, readout, batch_size, eval_batch_size) > 0,
                   "data.batches_per_epoch, n_val, n_test, readout, batch_size and eval_batch_size must be > 0")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_memory(num_features, max(n_test, readout, batch_size))
        self.input_dim, self.num_features, self.noise = input_dim, num_features, noise
        self.sizes = {"val": n_val, "test": n_test, "train": readout}
        self.batches_per_epoch, self.batch_size, self.eval_batch_size = batches_per_epoch, batch_size, eval_batch_size
        self.save_dir, self.seed = save_dir, seed
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.true_activations: dict[str, Tensor] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from sae_lens.synthetic import FeatureDictionary, SyntheticModel, orthogonal_initializer

        # the dictionary as SyntheticModel builds it (seeded by dictionary_seed: the same for every run seed), but
        # with its orthogonalisation's progress bar only in a terminal, not redrawn into a log
        steps = self.config.orthogonalization
        initializer = None if steps is None else orthogonal_initializer(
            num_steps=steps.num_steps, lr=steps.lr, chunk_size=steps.chunk_size, show_progress=sys.stderr.isatty())
        dictionary = FeatureDictionary(self.config.num_features, self.config.hidden_dim, bias=self.config.bias,
                                       initializer=initializer, seed=self.config.seed)
        self.model = SyntheticModel(self.config, feature_dict=dictionary)
        if self.save_dir and rank_and_world_size(self.trainer)[0] == 0:
            self.model.save(Path(self.save_dir) / "true_features")
        for split, n in self.sizes.items():
            x, features = self.sample(n, (SPLIT_SEEDS[split], self.config.seed))
            self.splits[split] = (x, features.argmax(1))
            if split == "test":
                self.true_activations[split] = features
        true_l0 = float((self.true_activations["test"] > 0).sum(1).double().mean())
        log.info(f"synthetic data: {self.num_features} true features in {self.input_dim} dimensions, true L0 "
                 f"{true_l0:.2f} on test")

    def sample(self, n: int, seed: tuple) -> tuple[Tensor, Tensor]:
        """(x [n, d], true feature activations [n, N]) from the global RNG seeded by ``seed``, restored after."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash_seed(seed))
            x, features = self.model.sample_with_features(n)
            if self.noise:
                x = x + self.noise * torch.randn_like(x)
        return x, features

    def train_dataloader(self):
        rank, _ = rank_and_world_size(self.trainer)
        return SyntheticBatches(self.sample, self.batches_per_epoch, self.batch_size, self.seed,
                                rank).following(self.trainer)

    def _fixed(self, split: str) -> TensorBatches:
        rank, world = rank_and_world_size(self.trainer)
        return TensorBatches(self.splits[split], self.eval_batch_size, False, self.seed, rank, world)

    def val_dataloader(self):
        return self._fixed("val")

    def test_dataloader(self):
        return self._fixed("test")


def hash_seed(parts: tuple) -> int:
    """A seed from a tuple of ints, the same in every process (Python's hash() of a tuple is not)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part)) % (2**63 - 1)
    return value


def check_memory(num_features: int, rows: int) -> None:
    """The dense true activations of the largest fixed draw, and SAELens's buffers of the same size, must fit."""
    needed = 3 * 4 * num_features * rows
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if needed > available / 2:
        raise ValueError(f"data.num_features={num_features} over {rows} rows needs {needed / 2**30:.1f} GiB of dense "
                         f"true activations (SAELens's generator is dense), more than half the "
                         f"{available / 2**30:.1f} GiB free: lower data.n_test, readout or batch_size")


def model_config(num_features, input_dim, firing_probability, mean_magnitudes, std_magnitudes, hierarchy,
                 correlation, orthogonalization, bias, seed):
    """SAELens's SyntheticModelConfig, each setting checked first, so that bad input is one line before any work
    (SAELens itself accepts a firing probability above 1 with correlations, and silently cuts a hierarchy that does
    not fit)."""
    from sae_lens.synthetic import (FoldedNormalMagnitudeConfig, HierarchyConfig, LinearMagnitudeConfig,
                                    LowRankCorrelationConfig, OrthogonalizationConfig, SyntheticModelConfig,
                                    ZipfianFiringProbabilityConfig)

    if num_features < 1 or input_dim < 1:
        raise ValueError(f"data.num_features={num_features} and data.input_dim={input_dim} must be >= 1")
    firing = dict(firing_probability or {})
    lowest, highest = firing.get("min_prob", 0.01), firing.get("max_prob", 0.3)
    if not 0 < lowest < highest <= 1 or firing.get("exponent", 1.0) <= 0:
        raise ValueError(f"data.firing_probability: every firing probability must lie in (0, 1] (0 < min_prob < "
                         f"max_prob <= 1, exponent > 0), got {firing}")
    tree = None
    if hierarchy:
        tree = HierarchyConfig(**{key: tuple(value) if isinstance(value, Sequence) else value
                                  for key, value in hierarchy.items()})
        levels = [tree.total_root_nodes * tree.branching_factor ** depth for depth in range(tree.max_depth + 1)] \
            if isinstance(tree.branching_factor, int) else None
        needed = sum(levels) if levels else tree.total_root_nodes * (1 + tree.max_depth * max(tree.branching_factor))
        if needed > num_features:
            raise ValueError(f"data.hierarchy does not fit: {tree.total_root_nodes} roots, branching "
                             f"{tree.branching_factor}, depth {tree.max_depth} need {needed} features, and "
                             f"data.num_features is {num_features}")
    if correlation and not 0 < correlation.get("rank", 0) < num_features:
        raise ValueError(f"data.correlation.rank must be in [1, num_features), got {correlation.get('rank')}")

    def magnitudes(value, law):
        return law(**value) if isinstance(value, Mapping) else float(value)

    mean = magnitudes(mean_magnitudes, LinearMagnitudeConfig)
    if (mean.start if isinstance(mean, LinearMagnitudeConfig) else mean) <= 0:
        raise ValueError(f"data.mean_firing_magnitudes must be > 0, got {mean_magnitudes}")
    return SyntheticModelConfig(
        num_features=num_features, hidden_dim=input_dim, firing_probability=ZipfianFiringProbabilityConfig(**firing),
        hierarchy=tree, correlation=LowRankCorrelationConfig(**correlation) if correlation else None,
        orthogonalization=OrthogonalizationConfig(**orthogonalization) if orthogonalization else None,
        mean_firing_magnitudes=mean, std_firing_magnitudes=magnitudes(std_magnitudes, FoldedNormalMagnitudeConfig),
        bias=bias, seed=seed)
