"""Files that appear whole or not at all: each is written under a fixed temporary name beside it
(``.<name>.partial``) and renamed over it, which is atomic within a folder. A kill mid-write leaves the old
file (or none) and a ``.partial`` that the next write of the same file replaces."""
import json
import os
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


@contextmanager
def written_whole(path: Path):
    """Yields the temporary path to write; on success it becomes ``path``, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_whole(path: Path, data: str | bytes) -> None:
    with written_whole(path) as partial:
        partial.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: Path, payload: dict) -> None:
    """A JSON file written whole (metrics.json): a reader never sees half of it, even if the writer is killed."""
    write_whole(path, json.dumps(payload, indent=2, sort_keys=True))
