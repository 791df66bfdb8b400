"""The run's final metrics as plain JSON, rewritten after every validation so that a run that dies
keeps what it had measured, with a status saying how it ended; and every validation's values, a JSON
line each, in ``history.jsonl`` beside it (the curves, without a logger)."""
import json
import math
from pathlib import Path

import pytorch_lightning as pl
import torch

from runtime.errors import first_line
from runtime.run_folder import LIVE, this_process
from runtime.files import write_json, write_whole


def epochs_trained(trainer) -> int:
    """Epochs whose training has ended: Lightning's ``current_epoch`` is the index of the epoch in progress,
    which at a validation that ends an epoch is one behind."""
    epochs, batches = trainer.fit_loop.epoch_progress.current, trainer.fit_loop.epoch_loop.batch_progress
    return epochs.completed + int(epochs.started > epochs.completed and batches.is_last_batch)


def report(trainer, values: dict[str, float]) -> None:
    """Values measured at the end of training: into callback_metrics (which MetricsFile writes in
    on_fit_end) and to every logger."""
    trainer.callback_metrics.update({name: torch.tensor(value) for name, value in values.items()})
    for logger in trainer.loggers:
        logger.log_metrics(values, step=trainer.global_step)


class MetricsFile(pl.Callback):
    def __init__(self, path: str, extra: dict | None = None):
        self.path = Path(path)
        self.extra = dict(extra or {})  # values measured outside the trainer (the calibration)
        self.measured: dict = {}  # every value the trainer reported, the latest of each

    def write(self, trainer, status: str, **values) -> dict:
        """``status``: running, trained (fit ended; a test may follow), failed (with ``error``), interrupted,
        and finished, which train.py writes once every read-out, the test and the timing are in. Returns
        what it wrote (nothing on other ranks than 0)."""
        if trainer.global_rank != 0:
            return {}
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
        self.measured |= {name: value if math.isfinite(value) else str(value) for name, value in metrics.items()}
        payload = {"status": status, "epoch": epochs_trained(trainer), "global_step": trainer.global_step,
                   **self.measured, **self.extra, **values}
        if status in LIVE:  # who is writing it, so that a reader can tell a live run from a killed one
            payload["process"] = this_process()
        write_json(self.path, payload)
        return payload

    def on_train_start(self, trainer, pl_module):
        """A resumed run validates again from its checkpoint's step: the lines that a killed process wrote after
        that checkpoint go, so that each validation is one line (as in an unbroken run)."""
        history = self.path.with_name("history.jsonl")
        if trainer.global_rank != 0 or not history.is_file():
            return
        lines = history.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line)["global_step"] <= trainer.global_step]
        if len(kept) != len(lines):
            write_whole(history, "".join(kept))

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.write(trainer, "running")
        if trainer.global_rank == 0:
            values = {name: float(value) for name, value in trainer.callback_metrics.items()
                      if value.numel() == 1 and not name.startswith("train/")}
            line = {"epoch": epochs_trained(trainer), "global_step": trainer.global_step, **values}
            with self.path.with_name("history.jsonl").open("a") as handle:
                handle.write(json.dumps(line) + "\n")

    def on_fit_end(self, trainer, pl_module):
        for logger in trainer.loggers:  # Lightning logs the index of the last epoch; this file, and now W&B, the count
            logger.log_metrics({"epoch": epochs_trained(trainer)}, step=trainer.global_step)
        self.write(trainer, "trained")

    def on_test_end(self, trainer, pl_module):
        self.write(trainer, "trained")

    def on_exception(self, trainer, pl_module, exception):
        # SystemExit: stopped by a signal (SLURM preemption, time limit), to be resumed from its checkpoint
        try:
            if isinstance(exception, (SystemExit, KeyboardInterrupt)):  # a signal, SIGINT (Ctrl-C) included
                self.write(trainer, "interrupted")
            else:
                self.write(trainer, "failed", error=first_line(exception))
        except OSError:  # the disk that failed the run may refuse this file too; the run's own error is reported
            pass

    def state_dict(self) -> dict:
        return {"metrics": self.measured}

    def load_state_dict(self, state_dict: dict) -> None:
        self.measured = state_dict["metrics"]  # a resumed run reports what it measured before the interruption
