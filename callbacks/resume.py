"""What a checkpoint needs beyond Lightning's own for a resumed run to match an unbroken one, and the
checkpoint a job writes when SLURM is about to stop it.

Who does what when SLURM stops a job (submitit, through hydra-submitit-launcher, owns requeueing):
- USR2, ``signal_delay_s`` before the time limit (or ``scancel --signal=USR2``): submitit's handler would
  requeue at once, mid-step. ``Preemption`` defers it: it saves ``last.ckpt`` at the end of the current
  batch, then hands the signal to submitit, which requeues the job and exits.
- SIGTERM (preemption, ``scontrol requeue``, ``scancel``): SLURM itself requeues (or cancels) the job.
  Lightning's handler stops the loop after the current batch; ``Preemption`` saves ``last.ckpt`` first.
- Lightning's own SLURM auto-requeue (SIGUSR1) is off (``SLURMEnvironment(auto_requeue=False)`` in
  train.py), so that exactly one of them requeues.
The requeued job runs in the same run folder and resumes from ``last.ckpt`` (train.py).
"""
import logging
import random
import signal
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from runtime.run_folder import LAST_CHECKPOINT

log = logging.getLogger(__name__)


class RNGState(pl.Callback):
    """Python, numpy and torch generator states (Lightning checkpoints do not hold them), as types that
    ``torch.load(weights_only=True)`` accepts."""

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        return {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                       has_gauss, gauss),
                "torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all()}

    def load_state_dict(self, state_dict: dict) -> None:
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        random.setstate(state_dict["python"])
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class Preemption(pl.Callback):
    def __init__(self, dirpath: str, requeue_signal: str = "USR2"):
        self.path = Path(dirpath) / LAST_CHECKPOINT
        self.requeue_signal = signal.Signals[f"SIG{requeue_signal}"]
        self.pending = None  # submitit's handler, waiting for the end of the batch

    def on_train_start(self, trainer, pl_module):
        handler = signal.getsignal(self.requeue_signal)
        if callable(handler):  # submitit's, inside a SLURM job; elsewhere nobody requeues
            signal.signal(self.requeue_signal, lambda signum, frame: self.defer(handler))

    def defer(self, handler) -> None:
        log.warning("%s received: checkpointing at the end of this batch, then requeueing", self.requeue_signal.name)
        self.pending = handler

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # one decision for all ranks (saving is collective), from whichever rank got the signal
        if not trainer.strategy.reduce_boolean_decision(self.pending is not None or trainer.received_sigterm,
                                                        all=False):
            return
        trainer.save_checkpoint(self.path)  # every rank takes part; rank 0 writes
        log.warning("checkpoint saved at step %d: %s", trainer.global_step, self.path)
        if self.pending is not None:
            handler, self.pending = self.pending, None
            handler(self.requeue_signal, None)  # submitit: resubmit the same job (same folder), then exit
