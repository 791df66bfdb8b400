"""Where a run's wall time goes. This callback times what happens inside fit: the training steps (from
a batch's start to its end: forward, backward, optimiser, per-step hooks), the validation loops and every
checkpoint write, and marks fit's start and training's end. train.py adds the marks around fit (the job's start, fit's return, the logger's finish) and
writes the seconds per phase into metrics.json (``time``)."""
import time

import pytorch_lightning as pl
from lightning_fabric.plugins import CheckpointIO

PHASES = ("start_up", "training_steps", "validation", "checkpoints", "between_steps", "end_of_fit", "finish")


class TimedCheckpointIO(CheckpointIO):
    """The strategy's own checkpoint writer, adding the seconds each save takes (serialising and writing)
    to ``seconds["checkpoints"]``."""

    def __init__(self, inner: CheckpointIO, seconds: dict[str, float]):
        self.inner, self.seconds = inner, seconds

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        started = time.perf_counter()
        self.inner.save_checkpoint(checkpoint, path, storage_options)
        self.seconds["checkpoints"] += time.perf_counter() - started

    def load_checkpoint(self, *args, **kwargs):
        return self.inner.load_checkpoint(*args, **kwargs)

    def remove_checkpoint(self, path) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()


class Stopwatch(pl.Callback):
    def __init__(self):
        self.seconds = {"training_steps": 0.0, "validation": 0.0, "checkpoints": 0.0}
        self.marks: dict[str, float] = {}

    def setup(self, trainer, pl_module, stage):
        if not isinstance(trainer.strategy.checkpoint_io, TimedCheckpointIO):  # once, though fit and test both call
            trainer.strategy.checkpoint_io = TimedCheckpointIO(trainer.strategy.checkpoint_io, self.seconds)

    def on_fit_start(self, trainer, pl_module):
        self.marks["fit_start"] = time.time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.step_started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seconds["training_steps"] += time.perf_counter() - self.step_started

    def on_validation_start(self, trainer, pl_module):
        self.validation_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        self.seconds["validation"] += time.perf_counter() - self.validation_started

    def on_train_end(self, trainer, pl_module):
        self.marks["train_end"] = time.time()
        self.checkpoints_in_training = self.seconds["checkpoints"]

    def on_fit_end(self, trainer, pl_module):
        if "train_end" not in self.marks:  # resumed after training ended (callbacks/read_out.py): read-outs only
            self.on_train_end(trainer, pl_module)

    def shares(self, started: float, fit_end: float, end: float) -> dict[str, float]:
        """Seconds per phase and their total, from ``started`` (train.py passes the interpreter's start for the
        first job of a process, imports included, else the job's start); between_steps is the rest of training
        (fetching batches, epoch ends), end_of_fit what follows it (read-outs, probes, unit statistics and their
        figures) less the checkpoints."""
        seconds = {"start_up": self.marks["fit_start"] - started, **self.seconds, "finish": end - fit_end}
        seconds["between_steps"] = (self.marks["train_end"] - self.marks["fit_start"] - self.seconds["training_steps"]
                                    - self.seconds["validation"] - self.checkpoints_in_training)
        seconds["end_of_fit"] = fit_end - self.marks["train_end"] - (self.seconds["checkpoints"]
                                                                     - self.checkpoints_in_training)
        return {name: round(seconds[name], 3) for name in PHASES} | {"total": round(end - started, 3)}


def share_line(seconds: dict[str, float]) -> str:
    total = seconds["total"]
    return ", ".join(f"{name.replace('_', ' ')} {100 * seconds[name] / total:.0f}%" for name in PHASES)
