"""Per-step cost of training the decoder-free encoder, relative to a bare PyTorch loop.

    python -m benchmarks.step_overhead

Every variant runs the same math on the same bundled MNIST: DecoderFreeEncoder (784 -> 64, relu),
CompositeLoss lse=1 variance=1 decorrelation=1 reduction=sum, Adam lr 1e-3, batch 256, STEPS steps
from a fresh model. Only the first WARMUP steps are untimed; the clock then runs to the end of
training, so a row that validates at epoch end pays for it inside the window (STEPS is about one
MNIST epoch, so that is the real amortisation). What a run costs beyond STEPS steady-state steps
(building the model, the Trainer and its fit start-up, the slower first steps) is reported apart, in
seconds, as "fixed".

The variants run interleaved, ROUNDS times; each row is the median over rounds of its time divided
by the bare loop's time in the same round. 1.00x means no overhead, 2.00x twice the bare step time.
Machines are noisy: trust the ratios, not the milliseconds, and compare ratios only run against run.
Torch's intra-op threads use every core and slow down many times over when another process shares
them, so the header prints the load average from before the run: well above 0, rerun when quiet.
"""
import logging
import os
import statistics
import tempfile
import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks.unit_metrics import UnitMetrics
from datamodules.mnist import MNISTDataModule
from datamodules.tensor_batches import TensorBatches
from lightning_modules.encoder import DecoderFreeEncoder
from lightning_modules.losses import CompositeLoss

STEPS = 200  # per fit; at most 215, one MNIST epoch at batch 256 (max_epochs=1)
WARMUP = 20  # first steps of each fit, not timed
ROUNDS = 5
BATCH = 256

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="pytorch_lightning")


def make_model() -> DecoderFreeEncoder:
    torch.manual_seed(0)
    loss = CompositeLoss({"lse": 1, "variance": 1, "decorrelation": 1}, reduction="sum")
    return DecoderFreeEncoder(input_dim=784, hidden_dim=64, loss=loss, lr=1e-3)


def in_memory(x, y):  # randperm once per epoch, one gather per batch
    while True:
        index = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            yield x[index[start:start + BATCH]]


def per_sample(x, y):  # torch DataLoader: BATCH calls to __getitem__, then the default collate
    while True:
        yield from (xb for xb, _ in DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True))


def tensor_batches(x, y):  # what the project's datamodules serve
    while True:
        yield from (xb for xb, _ in TensorBatches((x, y), BATCH, shuffle=True))


def bare(batches, dm) -> tuple[float, float]:
    begin, model = time.perf_counter(), make_model()
    optimizer = model.configure_optimizers()
    stream = batches(*dm.splits["train"])
    for step in range(STEPS):
        if step == WARMUP:
            start = time.perf_counter()
        loss = model.loss(model(next(stream)))["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = time.perf_counter()
    return end - start, end - begin


class Clock(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == WARMUP:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def lightning(dm, metrics: bool) -> tuple[float, float]:
    begin, clock, model = time.perf_counter(), Clock(), make_model()
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [clock] + ([UnitMetrics(output_dir=tmp, figures=False)] if metrics else [])
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=STEPS, limit_val_batches=1.0 if metrics else 0,
                             num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                             default_root_dir=tmp)
        trainer.fit(model, datamodule=dm)
    return clock.end - clock.start, time.perf_counter() - begin


VARIANTS = {
    "bare loop, in-memory tensor + randperm": lambda dm: bare(in_memory, dm),
    "bare loop, DataLoader(TensorDataset)": lambda dm: bare(per_sample, dm),
    "bare loop, TensorBatches": lambda dm: bare(tensor_batches, dm),
    "Lightning Trainer + module logging": lambda dm: lightning(dm, metrics=False),
    "  + UnitMetrics, validation at epoch end": lambda dm: lightning(dm, metrics=True),
}

if __name__ == "__main__":
    load = os.getloadavg()[0]  # before this run adds its own
    dm = MNISTDataModule(input_dim=784, batch_size=BATCH, eval_batch_size=5000, seed=0)
    dm.setup("fit")
    for run in VARIANTS.values():  # warm-up: lazy imports, allocator, first-call dispatch
        run(dm)
    times = {name: [] for name in VARIANTS}
    for _ in range(ROUNDS):
        for name, run in VARIANTS.items():
            times[name].append(run(dm))
    reference = [window for window, _ in times[next(iter(VARIANTS))]]
    print(f"torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()} threads, "
          f"{STEPS - WARMUP} timed steps x {ROUNDS} rounds, median over rounds; load average "
          f"{load:.1f} on {os.cpu_count()} cores before the run")
    print(f"{'variant':44s} {'ratio':>7s} {'ms/step':>8s} {'fixed s':>8s}")
    for name, runs in times.items():
        ratio = statistics.median(window / ref for (window, _), ref in zip(runs, reference))
        ms = 1e3 * statistics.median(window for window, _ in runs) / (STEPS - WARMUP)
        fixed = statistics.median(total - window * STEPS / (STEPS - WARMUP) for window, total in runs)
        print(f"{name:44s} {ratio:6.2f}x {ms:8.2f} {fixed:8.2f}")
