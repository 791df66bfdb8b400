"""MNIST from the four canonical idx ``.gz`` files, read with numpy and checked against their md5."""
import functools
import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from datamodules.tensor_batches import TensorDataModule, seeded_split

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "data" / "mnist"
# md5 of each file after gunzip, as published with the dataset
MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def read_idx(path: Path, expected_md5: str) -> np.ndarray:
    stat = path.stat()
    return decoded_idx(path, expected_md5, stat.st_size, stat.st_mtime_ns)


@functools.cache  # a sweep's jobs in one process decompress and check each file once (unless it changed)
def decoded_idx(path: Path, expected_md5: str, size: int, mtime_ns: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"MNIST file corrupt: {path} ({error}); expected md5 {expected_md5} after gunzip") from None
    actual = hashlib.md5(raw).hexdigest()
    if actual != expected_md5:
        raise ValueError(f"MNIST file corrupt: {path} has md5 {actual} after gunzip, expected {expected_md5}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class MNISTDataModule(TensorDataModule):
    def __init__(self, data_dir: str | None = None, val_size: int = 5000, **kwargs):
        super().__init__(**kwargs)
        if self.input_dim != 784:
            raise ValueError(f"MNIST has input_dim 784, got data.input_dim={self.input_dim}")
        self.data_dir = Path(data_dir) if data_dir else BUNDLED_DIR
        for name in MD5:
            path = self.data_dir / f"{name}.gz"
            if not path.is_file():
                raise FileNotFoundError(f"MNIST file missing: {path} (expected md5 {MD5[name]} after gunzip)")
        self.val_size = val_size

    def read_split(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``train`` or ``t10k``: flattened images in [0, 1] and labels."""
        images = read_idx(self.data_dir / f"{prefix}-images-idx3-ubyte.gz", MD5[f"{prefix}-images-idx3-ubyte"])
        labels = read_idx(self.data_dir / f"{prefix}-labels-idx1-ubyte.gz", MD5[f"{prefix}-labels-idx1-ubyte"])
        x = images.reshape(len(images), -1).astype(np.float32)
        x /= 255.0  # in place: a second 188 MB array costs more than the division
        return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))

    def load(self):
        train, val = seeded_split(*self.read_split("train"), self.val_size, self.seed)
        return {"train": train, "val": val, "test": self.read_split("t10k")}
