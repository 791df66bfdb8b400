"""A callback that signals its own process at a named hook: SIGKILL (the default) as a crash, OOM killer or node
failure would (no handler runs, nothing is flushed), or another signal (+callbacks.kill.signal=TERM, INT) as a
user or a scheduler would. Added from the command line in the tests:
    +callbacks.kill._target_=kill_at.KillAt +callbacks.kill.hook=on_train_end    (PYTHONPATH=tests)"""
import os
import signal as handlers
from signal import Signals as signals

import pytorch_lightning as pl


class KillAt(pl.Callback):
    def __init__(self, hook: str, step: int = 0, signal: str = "KILL"):
        self.hook, self.step, self.signal, self.sent = hook, step, signals[f"SIG{signal}"], False
        setattr(self, hook, self.kill)

    def kill(self, trainer, *args, **kwargs):
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True  # once: a handled signal lets the run go on to its next hook
            if self.signal == signals.SIGINT and handlers.getsignal(signals.SIGINT) == handlers.SIG_IGN:
                # a shell starts background jobs (CI's included) with SIGINT ignored; a Ctrl-C reaches a foreground
                # run, whose SIGINT Python turns into KeyboardInterrupt
                handlers.signal(signals.SIGINT, handlers.default_int_handler)
            os.kill(os.getpid(), self.signal)
