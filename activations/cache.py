"""An on-disk activation cache: one folder per key (model, layers, site, corpus, context length, ...),
``.npy`` shards per split that are memory-mapped on read, token ids beside the activations.

A shard's files are written under a temporary name and renamed; ``manifest.json`` (also replaced
atomically) lists the shards that are complete, with each file's CRC-32, and readers read only those,
checked. A harvest that is killed therefore leaves at worst files that no manifest names, overwritten when
it resumes; a shard damaged on disk later is refused by name instead of served.
"""
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from activations.corpus import SPLITS

log = logging.getLogger(__name__)


class CorruptCache(ValueError):
    pass


def checksum(array: np.ndarray) -> int:
    """CRC-32 of the array's bytes (zlib's, about 1 GB/s here: a shard's read, once per open)."""
    return zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free / 2**20
        raise OSError(f"cannot write activation cache shard {path} ({free:.0f} MiB free on its disk: "
                      f"{error.strerror or error}); the shards written so far are kept, and the harvest resumes "
                      f"after them when started again with room") from error


class ActivationCache:
    def __init__(self, root: str | Path, key: dict):
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        name = Path(str(key["model"])).name
        layers = "-".join(map(str, key["layers"]))
        self.dir = Path(root).expanduser() / f"{name}-{key['site']}-L{layers}-{digest}"
        self.manifest_path = self.dir / "manifest.json"

    @contextmanager
    def lock(self):
        """One harvest per key at a time: the jobs of a sweep wait for the first one, then reuse it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting for another job's harvest into %s", self.dir)
                started = time.time()
                fcntl.flock(handle, fcntl.LOCK_EX)
                log.info("another job's harvest ended after %.0f s", time.time() - started)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"activation cache manifest {self.manifest_path} is corrupt ({error}); "
                             f"delete {self.dir} to harvest again") from None
        if manifest.get("key") != self.key:
            differs = sorted(k for k in self.key.keys() | manifest.get("key", {}).keys()
                             if self.key.get(k) != manifest.get("key", {}).get(k))
            raise ValueError(f"activation cache {self.dir} was written for another key (differs in {differs}); "
                             f"delete it to harvest again")
        return manifest

    def new_manifest(self, width: int, harvest_batch_size: int) -> dict:
        return {"key": self.key, "width": width, "dtype": self.key["dtype"], "harvest_batch_size": harvest_batch_size,
                "splits": {split: {"shards": [], "complete": False} for split in SPLITS}}

    def write_manifest(self, manifest: dict) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, self.manifest_path)

    def shard_path(self, split: str, index: int, layer: int | None) -> Path:
        """Layer ``None``: the token ids."""
        return self.dir / split / f"{'tokens' if layer is None else f'L{layer}'}-{index:05d}.npy"

    def write_shard(self, manifest: dict, split: str, tokens: np.ndarray, activations: dict[int, np.ndarray],
                    sequences_end: int, left_out: list[dict] = ()) -> None:
        """Write one shard's files, then commit it in the manifest with its per-layer sums and the tokens
        the norm rule left out of it."""
        state = manifest["splits"][split]
        index = len(state["shards"])
        (self.dir / split).mkdir(parents=True, exist_ok=True)
        atomic_save(self.shard_path(split, index, None), tokens)
        stats = {}
        for layer, array in activations.items():
            stored = array.astype(self.key["dtype"])
            atomic_save(self.shard_path(split, index, layer), stored)
            x = array.astype(np.float64)
            stats[str(layer)] = {"sum": x.sum(0).tolist(), "norm_sum": float(np.linalg.norm(x, axis=1).sum()),
                                 "crc32": checksum(stored)}
        state["shards"].append({"rows": len(tokens), "sequences_end": sequences_end, "stats": stats,
                                "tokens_crc32": checksum(tokens), "left_out": list(left_out)})
        self.write_manifest(manifest)

    def open(self, manifest: dict, split: str, layer: int) -> list[np.ndarray]:
        """The split's shards of one layer, memory-mapped, each checked against the manifest."""
        arrays = []
        for index, shard in enumerate(manifest["splits"][split]["shards"]):
            expected = ((shard["rows"], manifest["width"]), np.dtype(manifest["dtype"]))
            arrays.append(self.load(self.shard_path(split, index, layer), expected,
                                    shard["stats"][str(layer)].get("crc32")))
        return arrays

    def tokens(self, manifest: dict, split: str) -> np.ndarray:
        shards = manifest["splits"][split]["shards"]
        return np.concatenate([self.load(self.shard_path(split, index, None), ((shard["rows"],), np.dtype(np.int32)),
                                         shard.get("tokens_crc32")) for index, shard in enumerate(shards)])

    def load(self, path: Path, expected: tuple, crc32: int | None) -> np.ndarray:
        """A shard memory-mapped, with the shape, type and checksum the manifest recorded (a cache harvested
        before checksums has none to check)."""
        redo = f"delete {self.dir} to harvest it again (the next run does)"
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise CorruptCache(f"activation cache shard {path} is missing, truncated or corrupt ({error}); "
                               f"{redo}") from None
        if (array.shape, array.dtype) != expected:
            raise CorruptCache(f"activation cache shard {path} has shape {array.shape} {array.dtype}, the manifest "
                               f"says {expected[0]} {expected[1]}; {redo}")
        if crc32 is not None and checksum(array) != crc32:
            raise CorruptCache(f"activation cache shard {path} is corrupt (its bytes differ from the harvest's "
                               f"checksum); {redo}")
        return array

    @staticmethod
    def left_out(manifest: dict, split: str) -> list[dict]:
        """The tokens the norm rule left out of a split, in harvest order."""
        return [token for shard in manifest["splits"][split]["shards"] for token in shard.get("left_out", [])]

    @staticmethod
    def statistics(manifest: dict, split: str, layer: int) -> tuple[np.ndarray, float, int]:
        """(sum of x, sum of ||x||, rows) over a split's shards, in float64."""
        shards = manifest["splits"][split]["shards"]
        total = np.sum([shard["stats"][str(layer)]["sum"] for shard in shards], axis=0)
        return total, sum(shard["stats"][str(layer)]["norm_sum"] for shard in shards), sum(s["rows"] for s in shards)
