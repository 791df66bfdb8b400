"""Datamodules whose splits live in memory as tensors. A batch is one gather through a shuffled
index, not ``batch_size`` calls to ``__getitem__`` plus a collate: for models this small the
per-sample path costs more than the model."""
import pytorch_lightning as pl
import torch
from torch import Tensor

from datamodules.resumable import ResumableBatches, even_split

NORMALIZATIONS = ("none", "center", "standardize")


class TensorBatches(ResumableBatches):
    def __init__(self, tensors: tuple[Tensor, ...], batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def _indices(self) -> Tensor:
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator()) if self.shuffle else torch.arange(n)
        return order[even_split(n, self.rank, self.world_size)]

    def __len__(self) -> int:
        return -(-(len(self.tensors[0]) // self.world_size) // self.batch_size)

    def batches(self, skip: int):
        indices = self._indices()
        for start in range(skip * self.batch_size, len(indices), self.batch_size):
            chunk = indices[start:start + self.batch_size]
            # index_select, not t[chunk]: the same rows, gathered faster on CPU (benchmarks/speed.py times both)
            yield tuple(t.index_select(0, chunk) for t in self.tensors)


class TensorDataModule(pl.LightningDataModule):
    """Subclasses implement ``load() -> {"train"|"val"|"test": (x, y)}``; normalisation is fitted on train."""

    def __init__(self, input_dim: int, batch_size: int = 256, eval_batch_size: int = 4096,
                 normalize: str = "none", seed: int = 0):
        super().__init__()
        if batch_size <= 0 or eval_batch_size <= 0:
            raise ValueError(f"data.batch_size must be > 0, got {batch_size} (eval {eval_batch_size})")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"unknown data.normalize {normalize!r}; choose from {list(NORMALIZATIONS)}")
        self.input_dim, self.batch_size, self.eval_batch_size = input_dim, batch_size, eval_batch_size
        self.normalize, self.seed = normalize, seed
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load()
        x_train = splits["train"][0]
        shift, scale = torch.zeros(x_train.shape[1]), torch.ones(x_train.shape[1])
        if self.normalize != "none":
            shift = x_train.mean(dim=0)
        if self.normalize == "standardize":
            scale = x_train.std(dim=0).clamp_min(1e-3)  # constant border pixels would divide by 0
        self.shift, self.scale = shift, scale
        if self.normalize != "none":  # else the loaded tensors as they are, not a copy of each
            splits = {name: ((x - shift) / scale, y) for name, (x, y) in splits.items()}
        self.splits = splits

    def inverse(self, x: Tensor) -> Tensor:
        """Back from the normalised space the model sees to the data's own units."""
        return x * self.scale.to(x.device) + self.shift.to(x.device)

    def _batches(self, split: str, shuffle: bool) -> TensorBatches:
        rank, world = rank_and_world_size(self.trainer)
        size = self.batch_size if shuffle else self.eval_batch_size
        return TensorBatches(self.splits[split], size, shuffle, self.seed, rank, world).following(self.trainer)

    def train_dataloader(self):
        return self._batches("train", shuffle=True)

    def val_dataloader(self):
        return self._batches("val", shuffle=False)

    def test_dataloader(self):
        return self._batches("test", shuffle=False)


def rank_and_world_size(trainer) -> tuple[int, int]:
    """This process's shard of the data under DDP; (0, 1) outside a trainer."""
    return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)


def seeded_split(x: Tensor, y: Tensor, n_second: int, seed: int):
    """Split off ``n_second`` examples at random, the same ones for the same seed."""
    if not 0 < n_second < len(x):
        raise ValueError(f"a split of {n_second} from {len(x)} examples is impossible")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    first, second = order[:-n_second], order[-n_second:]
    return (x[first], y[first]), (x[second], y[second])
