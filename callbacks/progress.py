"""Progress a person can follow: in a terminal, a bar with the training loss and L0; elsewhere (a
background job, a SLURM log), a plain line every ``every_s`` seconds instead of a bar redrawn into the
file. Every validation ends with one line of its metrics, which the run's train.log keeps."""
import logging
import sys
import time
from datetime import timedelta

from pytorch_lightning.callbacks import TQDMProgressBar
from tqdm import tqdm

from callbacks.metrics_file import epochs_trained

log = logging.getLogger(__name__)

SHOWN = ("l0", "dead_fraction", "val/ce", "val/acc")  # beside every val/ loss term, where the run has them


def duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def metric_line(metrics: dict, names) -> str:
    return ", ".join(f"{name} {float(metrics[name]):.4g}" for name in names if name in metrics)


class Progress(TQDMProgressBar):
    def __init__(self, every_s: float = 30.0):
        super().__init__()
        self.every_s = every_s
        self.plain = not sys.stderr.isatty()
        if self.plain:
            self.disable()

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: the run folder says which run this is
        return metrics

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.started = self.last_line = time.monotonic()
        self.first_step, self.total_steps = trainer.global_step, trainer.estimated_stepping_batches

    def on_train_epoch_start(self, trainer, pl_module):
        super().on_train_epoch_start(trainer, pl_module)
        # counted from 1, as the lines below count (Lightning's bar shows the epoch's index)
        self.train_progress_bar.set_description(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        now = time.monotonic()
        if self.plain and trainer.is_global_zero and now - self.last_line >= self.every_s:
            self.last_line = now
            steps, total = trainer.global_step, self.total_steps
            rate = (steps - self.first_step) / (now - self.started)
            eta = f", {duration((total - steps) / rate)} left" if rate > 0 and total != float("inf") else ""
            log.info("epoch %d/%d, step %d/%s (%.0f%%), %.3g steps/s%s: %s", trainer.current_epoch + 1,
                     trainer.max_epochs, steps, total, 100 * steps / total, rate, eta,
                     metric_line(metrics := self.get_metrics(trainer, pl_module), metrics))

    def on_validation_end(self, trainer, pl_module):
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        names = dict.fromkeys([name for name in metrics if name.startswith("val/")] + list(SHOWN))
        with tqdm.external_write_mode(file=sys.stdout):  # on its own line, under the bars
            log.info("epoch %d/%d done, step %d, %s elapsed: %s", epochs_trained(trainer), trainer.max_epochs,
                     trainer.global_step, duration(time.monotonic() - self.started), metric_line(metrics, names))
