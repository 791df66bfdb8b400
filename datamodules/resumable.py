"""Training batches that a checkpoint can resume mid-epoch, exactly.

The order of an epoch's batches is a function of (seed, epoch) alone, the epoch being the trainer's
(or ``set_epoch``'s, outside one). Lightning saves ``state_dict()`` in every checkpoint, with the number
of batches served; a restored iterable serves the rest of that epoch.
"""
import torch


class ResumableBatches:
    epoch = 0
    position = 0  # batches served in this epoch
    resume_at: dict | None = None
    trainer = None  # set by the datamodule: the epoch is the trainer's

    def following(self, trainer):
        self.trainer = trainer
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.resume_at = state  # Lightning loads the state before iter(): applied by the next epoch that matches

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)

    def __iter__(self):
        # a generator: this body runs at the first next(), once the trainer has its epoch (also on restore)
        if self.trainer is not None:
            self.epoch = self.trainer.current_epoch
        skip = self.resume_at["position"] if self.resume_at and self.resume_at["epoch"] == self.epoch else 0
        self.resume_at, self.position = None, skip
        for batch in self.batches(skip):
            self.position += 1
            yield batch

    def batches(self, skip: int):
        """This epoch's batches from the ``skip``-th on."""
        raise NotImplementedError


def even_split(n: int, rank: int, world_size: int) -> slice:
    """This rank's stride of n items, the same count on every rank (up to world_size - 1 dropped): collective
    ops on the global batch need every rank to take the same number of steps with the same batch sizes."""
    return slice(rank, n - n % world_size, world_size)
