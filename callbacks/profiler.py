"""The Trainer's profiler when no profiling is asked for. Lightning's default, PassThroughProfiler, still
opens a generator-based context around every hook it calls, about 30 an optimiser step in a run of this
project (with its callbacks), at ~2 µs each on this machine; this one hands out one shared no-op context.
Profile with trainer.profiler=simple (or advanced, or pytorch)."""
import contextlib

from pytorch_lightning.profilers import PassThroughProfiler


class NoProfiler(PassThroughProfiler):
    _nothing = contextlib.nullcontext()  # reentrant and reusable: it does nothing on enter or exit

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._nothing
