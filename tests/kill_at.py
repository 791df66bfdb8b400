"""A callback that kills its own process with SIGKILL at a named hook, as a crash, OOM killer or node
failure would: no handler runs, nothing is flushed. Added from the command line in the tests:
    +callbacks.kill._target_=kill_at.KillAt +callbacks.kill.hook=on_train_end    (PYTHONPATH=tests)"""
import os
import signal

import pytorch_lightning as pl


class KillAt(pl.Callback):
    def __init__(self, hook: str, step: int = 0):
        self.hook, self.step = hook, step
        setattr(self, hook, self.kill)

    def kill(self, trainer, *args, **kwargs):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)
