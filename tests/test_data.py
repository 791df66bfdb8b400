import gzip
import shutil

import pytest
import torch

from datamodules.gaussian_mixture import GaussianMixtureDataModule
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


def test_tensor_batches_cover_each_example_once_per_epoch_in_a_new_order():
    x = torch.arange(103)
    batches = TensorBatches((x,), batch_size=10, shuffle=True, seed=3)
    first, second = (torch.cat([b for (b,) in batches]) for _ in range(2))
    assert len(batches) == 11
    assert sorted(first.tolist()) == list(range(103)) == sorted(second.tolist())
    assert not torch.equal(first, second)


def test_tensor_batches_shard_disjointly_across_ranks():
    x = torch.arange(50)
    shards = [torch.cat([b for (b,) in TensorBatches((x,), 8, True, seed=0, rank=r, world_size=2)]) for r in (0, 1)]
    assert sorted(torch.cat(shards).tolist()) == list(range(50))


def test_gaussian_mixture_is_reproducible_and_labelled():
    first, second = (GaussianMixtureDataModule(input_dim=5, n_clusters=3, seed=7) for _ in range(2))
    first.setup(), second.setup()
    assert torch.equal(first.splits["train"][0], second.splits["train"][0])
    assert first.splits["train"][0].shape == (4096, 5) and first.splits["test"][1].max() == 2
