import gzip
import shutil

import numpy as np
import pytest
import torch

from datamodules.gaussian_mixture import GaussianMixtureDataModule
from datamodules.lm_activations import ShardBatches
from datamodules.mnist import BUNDLED_DIR, MNISTDataModule
from datamodules.tensor_batches import TensorBatches


@pytest.fixture(scope="module")
def mnist():
    datamodule = MNISTDataModule(input_dim=784, seed=0)
    datamodule.setup()
    return datamodule


def test_mnist_splits_shapes_and_range(mnist):
    (x_train, y_train), (x_val, _), (x_test, y_test) = (mnist.splits[s] for s in ("train", "val", "test"))
    assert x_train.shape == (55000, 784) and x_val.shape == (5000, 784) and x_test.shape == (10000, 784)
    assert x_train.min() >= 0 and x_train.max() <= 1 and x_train.dtype == torch.float32
    assert set(y_test.unique().tolist()) == set(range(10)) and len(y_train) == 55000


def test_validation_split_is_seeded(mnist):
    again, other = MNISTDataModule(input_dim=784, seed=0), MNISTDataModule(input_dim=784, seed=1)
    again.setup(), other.setup()
    assert torch.equal(again.splits["val"][0], mnist.splits["val"][0])
    assert not torch.equal(other.splits["val"][0], mnist.splits["val"][0])


def test_standardize_is_fitted_on_train(mnist):
    datamodule = MNISTDataModule(input_dim=784, normalize="standardize")
    datamodule.setup()
    x = datamodule.splits["train"][0]
    assert x.mean(dim=0).abs().max() < 1e-4
    informative = mnist.splits["train"][0].std(dim=0) > 1e-3  # below that, the std is clamped, not divided by
    torch.testing.assert_close(x.std(dim=0)[informative], torch.ones(int(informative.sum())), atol=1e-3, rtol=0)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        MNISTDataModule(data_dir=str(tmp_path), input_dim=784)
    for path in BUNDLED_DIR.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    corrupt = tmp_path / "t10k-labels-idx1-ubyte.gz"
    corrupt.write_bytes(gzip.compress(gzip.decompress(corrupt.read_bytes())[:-1] + b"\x07"))
    datamodule = MNISTDataModule(data_dir=str(tmp_path), input_dim=784)
    with pytest.raises(ValueError, match=f"{corrupt}.*expected 27ae3e4e09519cfbb04c329615203637"):
        datamodule.setup()


def epoch(batches, epoch: int) -> torch.Tensor:
    batches.set_epoch(epoch)  # as Lightning does at every epoch start
    return torch.cat([b[0] for b in batches])


def test_tensor_batches_cover_each_example_once_per_epoch_in_a_new_order():
    x = torch.arange(103)
    batches = TensorBatches((x,), batch_size=10, shuffle=True, seed=3)
    first, second = epoch(batches, 0), epoch(batches, 1)
    assert len(batches) == 11
    assert sorted(first.tolist()) == list(range(103)) == sorted(second.tolist())
    assert not torch.equal(first, second) and torch.equal(first, epoch(batches, 0))


def test_tensor_batches_shard_evenly_and_disjointly_across_ranks_as_one_doubled_batch():
    x = torch.arange(51)
    ranks = [TensorBatches((x,), 8, True, seed=0, rank=r, world_size=2) for r in (0, 1)]
    one = TensorBatches((x,), 16, True, seed=0)
    per_rank = [[b for (b,) in batches] for batches in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0]) == 4
    assert [len(b) for b in per_rank[0]] == [len(b) for b in per_rank[1]]  # collectives need equal batches
    for (whole,), part0, part1 in zip(one, *per_rank):  # 25 rows each: one row of 51 is dropped
        assert set(part0.tolist()) | set(part1.tolist()) <= set(whole.tolist())
    assert len(set(torch.cat(per_rank[0] + per_rank[1]).tolist())) == 50


@pytest.mark.parametrize("stop", [0, 3, 7])
def test_tensor_batches_resume_mid_epoch_from_their_state(stop):
    x = torch.arange(70)
    unbroken = TensorBatches((x,), 10, True, seed=5)
    unbroken.set_epoch(2)
    expected = [b for (b,) in unbroken]
    killed = TensorBatches((x,), 10, True, seed=5)
    killed.set_epoch(2)
    served = iter(killed)
    for _ in range(stop):
        next(served)
    resumed = TensorBatches((x,), 10, True, seed=5)
    resumed.load_state_dict(killed.state_dict())
    resumed.set_epoch(2)
    rest = [b for (b,) in resumed]
    assert len(rest) == 7 - stop and all(torch.equal(a, b) for a, b in zip(rest, expected[stop:]))
    assert len(epoch(resumed, 3)) == 70  # the next epoch is whole


def test_gaussian_mixture_is_reproducible_and_labelled():
    first, second = (GaussianMixtureDataModule(input_dim=5, n_clusters=3, seed=7) for _ in range(2))
    first.setup(), second.setup()
    assert torch.equal(first.splits["train"][0], second.splits["train"][0])
    assert first.splits["train"][0].shape == (4096, 5) and first.splits["test"][1].max() == 2


def shard_batches(batch_size: int, rank: int = 0, world_size: int = 1) -> ShardBatches:
    sizes = [30, 25, 40, 17, 9]
    rows = np.arange(sum(sizes), dtype=np.float32)
    shards = np.split(np.stack([rows, -rows], axis=1), np.cumsum(sizes)[:-1])
    return ShardBatches(shards, np.arange(sum(sizes)), batch_size, window=2, seed=1, rank=rank, world_size=world_size)


def test_shard_batches_serve_every_row_once_with_its_token_and_resume_mid_epoch():
    batches = shard_batches(8)
    batches.set_epoch(1)
    served = list(batches)
    x = torch.cat([b[0] for b in served])
    assert len(served) == len(batches) and sorted(x[:, 0].tolist()) == list(range(121))
    assert all(torch.equal(b[0][:, 0].long(), b[1]) and torch.equal(b[0][:, 1], -b[0][:, 0]) for b in served)
    resumed = shard_batches(8)
    resumed.load_state_dict({"epoch": 1, "position": 6})
    resumed.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, served[6:], strict=True))


def test_shard_batches_on_two_ranks_split_the_batches_of_one_process_at_twice_the_batch():
    one = [b[1] for b in shard_batches(16)]
    ranks = [[b[1] for b in shard_batches(8, rank, 2)] for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(shard_batches(8, 0, 2))
    for whole, part0, part1 in zip(one, *ranks, strict=True):
        assert len(part0) == len(part1) and set(part0.tolist()) | set(part1.tolist()) <= set(whole.tolist())
