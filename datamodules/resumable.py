"""Training batches that a checkpoint can resume mid-epoch, exactly.

The order of an epoch's batches is a function of (seed, epoch) alone, the epoch being the trainer's
(or ``set_epoch``'s, outside one). Lightning saves ``state_dict()`` in every checkpoint, with the number
of batches served; a restored iterable serves the rest of that epoch.

With ``steps_per_batch`` G > 1, each batch Lightning sees is a StepGroup of G of these batches (the
epoch's last group holds the rest), one optimiser step each: Lightning's fixed cost per batch is then
paid once per G steps.
"""
import itertools

import torch


class StepGroup(list):
    """Consecutive batches served as one Lightning batch; the model takes one optimiser step on each."""


class ResumableBatches:
    epoch = 0
    position = 0  # batches served in this epoch
    resume_at: dict | None = None
    trainer = None  # set by the datamodule: the epoch is the trainer's
    steps_per_batch = 1

    def following(self, trainer):
        self.trainer = trainer
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "steps_per_batch": self.steps_per_batch}

    def load_state_dict(self, state: dict) -> None:
        self.resume_at = state  # Lightning loads the state before iter(): applied by the next epoch that matches

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        # a generator: this body runs at the first next(), once the trainer has its epoch (also on restore)
        if self.trainer is not None:
            self.epoch = self.trainer.current_epoch
        skip = self.resume_at["position"] if self.resume_at and self.resume_at["epoch"] == self.epoch else 0
        if skip and self.resume_at.get("steps_per_batch", 1) != self.steps_per_batch:
            raise ValueError(f"the checkpoint was written with data.steps_per_batch={self.resume_at['steps_per_batch']}"
                             f" mid-epoch; resume it with the same (this run has {self.steps_per_batch})")
        self.resume_at, self.position = None, skip
        batches = self.batches(skip * self.steps_per_batch)
        if self.steps_per_batch > 1:
            batches = step_groups(batches, self.steps_per_batch)
        for batch in batches:
            self.position += 1
            yield batch

    def batches(self, skip: int):
        """This epoch's batches from the ``skip``-th on."""
        raise NotImplementedError


def step_groups(batches, size: int):
    while group := StepGroup(itertools.islice(batches, size)):
        yield group


def optimizer_steps(trainer) -> float:
    """Optimiser steps in the whole fit. Lightning's estimate counts batches; a StepGroup batch holds
    steps_per_batch steps (the epoch's last one the rest)."""
    estimate = trainer.estimated_stepping_batches  # loads the training batches if they are not yet
    batches = trainer.train_dataloader
    per_batch = getattr(batches, "steps_per_batch", 1)
    if per_batch == 1 or trainer.max_epochs in (None, -1):
        return estimate
    steps = trainer.max_epochs * min(trainer.num_training_batches * per_batch, batches.steps_per_epoch())
    return steps if trainer.max_steps == -1 else min(steps, trainer.max_steps)


def even_split(n: int, rank: int, world_size: int) -> slice:
    """This rank's stride of n items, the same count on every rank (up to world_size - 1 dropped): collective
    ops on the global batch need every rank to take the same number of steps with the same batch sizes."""
    return slice(rank, n - n % world_size, world_size)
