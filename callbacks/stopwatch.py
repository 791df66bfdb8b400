"""Where a run's wall time goes. This callback times what happens inside fit: the training steps (from
a batch's start to its end: forward, backward, optimiser, per-step hooks) and the validation loops, and
marks fit's start and training's end. train.py adds the marks around it (the job's start, fit's return,
the logger's finish) and writes the seconds per phase into metrics.json (``time``)."""
import time

import psutil
import pytorch_lightning as pl

PHASES = ("start_up", "training_steps", "validation", "between_steps", "end_of_fit", "finish")


class Stopwatch(pl.Callback):
    def __init__(self):
        self.seconds = {"training_steps": 0.0, "validation": 0.0}
        self.marks: dict[str, float] = {}

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

    def shares(self, job_start: float, fit_end: float, end: float, first_job: bool) -> dict[str, float]:
        """Seconds per phase and their total. Start-up runs from the process's start for the first job of a
        process (imports included), else from the job's; between_steps is the rest of fit (fetching
        batches, checkpoints, epoch ends)."""
        started = psutil.Process().create_time() if first_job else job_start
        seconds = {"start_up": self.marks["fit_start"] - started, **self.seconds,
                   "end_of_fit": fit_end - self.marks["train_end"], "finish": end - fit_end}
        seconds["between_steps"] = (self.marks["train_end"] - self.marks["fit_start"]
                                    - self.seconds["training_steps"] - self.seconds["validation"])
        return {name: round(seconds[name], 3) for name in PHASES} | {"total": round(end - started, 3)}


def share_line(seconds: dict[str, float]) -> str:
    total = seconds["total"]
    return ", ".join(f"{name.replace('_', ' ')} {100 * seconds[name] / total:.0f}%" for name in PHASES)
