"""Checkpoints that are whole or absent. A checkpoint is written under a temporary name, flushed to the
disk and renamed over the old one (a rename within a folder is atomic), so that a kill or a full disk
mid-write leaves the previous checkpoint intact; and a checkpoint is read once before a resume starts,
so that a damaged one is one line that names it rather than a traceback from inside the fit."""
import os
import shutil
from pathlib import Path

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from runtime.errors import first_line


class UnreadableCheckpoint(ValueError):
    pass


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, path)
        except (OSError, RuntimeError) as error:  # torch reports a failed write as a RuntimeError
            written = partial.stat().st_size / 2**20 if partial.is_file() else 0.0
            free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free / 2**20
            partial.unlink(missing_ok=True)
            kept = "an earlier one is kept whole" if path.is_file() else "no earlier one exists"
            reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
            raise OSError(f"cannot write checkpoint {path} (stopped at {written:.1f} MiB with {free:.1f} MiB free "
                          f"on its disk: {reason}); {kept}, and the run resumes from it when started again with "
                          f"room") from error


RESUME_ADVICE = "delete it to start its run over, or resume from another checkpoint with ckpt_path="


def check_readable(path: str, advice: str = RESUME_ADVICE) -> dict:
    """Open the checkpoint as a resume would (memory-mapped: no copy of the weights is read); its state_dict."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError("not a Lightning checkpoint: it holds no state_dict")
    except Exception as error:  # torch raises RuntimeError, EOFError, pickle's and zipfile's errors, ...
        reason = first_line(error).split(". ")[0]
        raise UnreadableCheckpoint(f"checkpoint {path} is truncated or corrupt ({reason}): {advice}") from None
    return checkpoint["state_dict"]


def check_fits(path: str, state_dict: dict, model: torch.nn.Module) -> None:
    """A checkpoint of another model (another class or width) is refused before the fit opens the run's files."""
    ours = model.state_dict()
    missing, unexpected = sorted(ours.keys() - state_dict.keys()), sorted(state_dict.keys() - ours.keys())
    reshaped = sorted(name for name in ours.keys() & state_dict.keys()
                      if tuple(ours[name].shape) != tuple(state_dict[name].shape))
    if missing or unexpected or reshaped:
        differs = "; ".join(f"{what} {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}" for what, names in
                            (("lacks", missing), ("has extra", unexpected), ("has other shapes for", reshaped))
                            if names)
        shapes = "".join(f" ({name}: {tuple(state_dict[name].shape)} there, {tuple(ours[name].shape)} here)"
                         for name in reshaped[:1])
        raise UnreadableCheckpoint(f"checkpoint {path} holds another model than this config builds: it {differs}"
                                   f"{shapes}; resume with the run's own config, or from its own checkpoint")
