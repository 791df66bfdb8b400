"""A measurement taken once, when training ends. Lightning calls ``on_train_end`` while the model is still
on its device; but a run resumed from a checkpoint written after its last epoch (killed during the
read-outs) skips the training loop and that hook with it, and gets only ``on_fit_end``. A read-out runs in
whichever comes first, so a rerun finishes what the killed run had not."""
import logging
import time

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class ReadOut(pl.Callback):
    read_this_fit = False
    description = "a read-out"  # what the line before and after it names

    def timed_read_out(self, trainer, pl_module) -> None:
        """The read-out after a line that names it, since some take minutes (downstream fidelity on an LM), and
        its time after it where it took more than 10 s."""
        started = time.time()
        log.info("end of fit: %s ...", self.description)
        self.read_out(trainer, pl_module)
        if time.time() - started > 10:
            log.info("end of fit: %s done in %.0f s", self.description, time.time() - started)

    def read_out(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise NotImplementedError

    def on_fit_start(self, trainer, pl_module):
        self.read_this_fit = False

    def on_train_end(self, trainer, pl_module):
        stop_if_asked(trainer)
        self.read_this_fit = True
        pl_module.zero_grad(set_to_none=True)  # the last step's gradients, as large as the weights, are done with
        if trainer.global_rank == 0:
            self.timed_read_out(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module):
        stop_if_asked(trainer)
        if not self.read_this_fit and trainer.global_rank == 0:
            self.timed_read_out(trainer, pl_module)


def stop_if_asked(trainer) -> None:
    """A SIGTERM that arrives after the last step (Lightning checks only inside its loops) stops the run before
    the next read-out; the rerun does the read-outs it had not done."""
    if trainer.received_sigterm:
        raise SIGTERMException
