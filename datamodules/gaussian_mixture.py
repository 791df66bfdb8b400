"""A labelled Gaussian mixture: k clusters in d dimensions, for tests and quick runs."""
import torch

from datamodules.tensor_batches import TensorDataModule


class GaussianMixtureDataModule(TensorDataModule):
    def __init__(self, n_clusters: int = 8, n_train: int = 4096, n_val: int = 1024, n_test: int = 1024,
                 separation: float = 4.0, noise: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if min(n_clusters, n_train, n_val, n_test, self.input_dim) <= 0:
            raise ValueError("data.n_clusters, n_train, n_val, n_test and input_dim must be > 0")
        self.n_clusters, self.separation, self.noise = n_clusters, separation, noise
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}

    def load(self):
        generator = torch.Generator().manual_seed(self.seed)
        means = self.separation * torch.randn(self.n_clusters, self.input_dim, generator=generator)
        splits = {}
        for name, n in self.sizes.items():
            y = torch.randint(self.n_clusters, (n,), generator=generator)
            x = means[y] + self.noise * torch.randn(n, self.input_dim, generator=generator)
            splits[name] = (x, y)
        return splits
