"""Per-step cost of training each model with Lightning, relative to a bare PyTorch loop.

    python -m benchmarks.step_overhead

For every model of the study (the conf/model and conf/loss defaults; TopK with k=8) and two scales
on the bundled MNIST, it times the project's LightningModule fitted by a Trainer against a bare loop
over the same module: its forward, the same CompositeLoss, Adam lr 1e-3 and the same post-step
normalize_weights(), on an in-memory tensor shuffled by randperm. Per-step framework overhead is
roughly fixed, so its ratio should fade as the step grows from small to large:

    small: 784 -> 64 latents, batch 256 (the configs' defaults)
    large: 784 -> 512 latents, batch 1024: 30-50 ms a step on a quiet 2-core CPU, where 4096 latents
           take 0.3 s (SAEs) to 1.4 s (the encoder, whose decorrelation is quadratic in the width).

Each fit runs `steps` steps from a fresh model in one MNIST epoch. The first `warmup` are untimed;
the clock then runs to the end of training, so a fit that validates at epoch end pays for it inside
the window. Start-up (building the model, the Trainer and its fit) is not counted.

The variants run interleaved, `rounds` times per scale; a ratio is the median over rounds of a
variant's time divided by its bare loop's time in the same round. 1.00x means no overhead. The
encoder at the small scale also gets the data-serving rows (DataLoader, TensorBatches) and a fit
with UnitMetrics and validation. Machines are noisy: trust the ratios, not the milliseconds, and
compare ratios only run against run. Torch's intra-op threads use every core and slow down many
times over when another process shares them, so the header prints the load average from before
the run: well above 0, rerun when quiet.
"""
import logging
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from functools import partial

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks.unit_metrics import UnitMetrics
from datamodules.mnist import MNISTDataModule
from datamodules.tensor_batches import TensorBatches
from lightning_modules.encoder import DecoderFreeEncoder
from lightning_modules.losses import CompositeLoss
from lightning_modules.sae import JumpReLUSAE, SparseAutoencoder, TopKSAE


@dataclass(frozen=True)
class Scale:
    hidden: int
    batch: int
    steps: int  # per fit, within one MNIST epoch (Trainer max_epochs=1)
    warmup: int  # first steps of each fit, not timed
    rounds: int


SCALES = {
    "small": Scale(hidden=64, batch=256, steps=200, warmup=20, rounds=5),
    "large": Scale(hidden=512, batch=1024, steps=50, warmup=10, rounds=3),
}


def sae_loss(**sparsity) -> CompositeLoss:
    return CompositeLoss({"mse": 1, **sparsity}, reduction="mean")


MODELS = {  # hidden width -> module, as conf/model/*.yaml and conf/loss/*.yaml build it
    "encoder lse+var+decorr": lambda h: DecoderFreeEncoder(
        784, h, CompositeLoss({"lse": 1, "variance": 1, "decorrelation": 1}, reduction="sum")),
    "SAE mse+l1": lambda h: SparseAutoencoder(784, h, sae_loss(l1=1e-3)),
    "SAE tied mse+l1": lambda h: SparseAutoencoder(784, h, sae_loss(l1=1e-3), tied=True),
    "JumpReLU mse+l0": lambda h: JumpReLUSAE(784, h, sae_loss(l0=1e-3), unit_norm_decoder=True),
    "TopK mse+auxk": lambda h: TopKSAE(784, h, sae_loss(auxk=1 / 32), k=8, k_aux=32, unit_norm_decoder=True),
}
ENCODER = next(iter(MODELS))

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="pytorch_lightning")


def in_memory(x, y, batch):  # randperm once per epoch, one gather per batch
    while True:
        index = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            yield x[index[start:start + batch]]


def per_sample(x, y, batch):  # torch DataLoader: `batch` calls to __getitem__, then the default collate
    while True:
        yield from (xb for xb, _ in DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True))


def tensor_batches(x, y, batch):  # what the project's datamodules serve
    while True:
        yield from (xb for xb, _ in TensorBatches((x, y), batch, shuffle=True))


def build(model: str, scale: Scale) -> pl.LightningModule:
    torch.manual_seed(0)
    return MODELS[model](scale.hidden)


def bare(model: str, scale: Scale, dm, batches=in_memory) -> float:
    module = build(model, scale)
    optimizer = module.configure_optimizers()
    stream = batches(*dm.splits["train"], dm.batch_size)
    for step in range(scale.steps):
        if step == scale.warmup:
            start = time.perf_counter()
        loss = module.loss(module(next(stream)))["objective"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.normalize_weights()  # what the module's on_train_batch_end does
    return time.perf_counter() - start


class Clock(pl.Callback):
    def __init__(self, warmup: int):
        self.warmup = warmup

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def lightning(model: str, scale: Scale, dm, metrics: bool = False) -> float:
    clock, module = Clock(scale.warmup), build(model, scale)
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [clock] + ([UnitMetrics(output_dir=tmp, figures=False)] if metrics else [])
        trainer = pl.Trainer(max_epochs=1, limit_train_batches=scale.steps, limit_val_batches=1.0 if metrics else 0,
                             num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                             default_root_dir=tmp)
        trainer.fit(module, datamodule=dm)
    return clock.end - clock.start


EXTRAS = {  # encoder, small scale only; each against the same bare loop
    "bare loop, DataLoader(TensorDataset)": partial(bare, batches=per_sample),
    "bare loop, TensorBatches": partial(bare, batches=tensor_batches),
    "Lightning + UnitMetrics, validation at epoch end": partial(lightning, metrics=True),
}


def variants(scale_name: str) -> dict:
    runs = {}
    for model in MODELS:
        runs[model, "bare"], runs[model, "Lightning"] = bare, lightning
        if model == ENCODER and scale_name == "small":
            runs.update({(model, name): run for name, run in EXTRAS.items()})
    return runs


def ratio(times: dict, model: str, variant: str) -> float:
    return statistics.median(t / ref for t, ref in zip(times[model, variant], times[model, "bare"]))


if __name__ == "__main__":
    load = os.getloadavg()[0]  # before this run adds its own
    start, times = time.perf_counter(), {}
    for scale_name, scale in SCALES.items():
        dm = MNISTDataModule(input_dim=784, batch_size=scale.batch, eval_batch_size=5000, seed=0)
        dm.setup("fit")
        runs = variants(scale_name)
        if scale_name == "small":  # warm-up: lazy imports, allocator, first-call dispatch
            for (model, _), run in runs.items():
                run(model, scale, dm)
        times[scale_name] = {key: [] for key in runs}
        for _ in range(scale.rounds):
            for (model, variant), run in runs.items():
                times[scale_name][model, variant].append(run(model, scale, dm))

    print(f"torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()} threads; load average "
          f"{load:.1f} on {os.cpu_count()} cores before the run; {time.perf_counter() - start:.0f} s")
    for name, s in SCALES.items():
        print(f"{name}: 784 -> {s.hidden}, batch {s.batch}, {s.steps - s.warmup} timed steps x {s.rounds} rounds")
    print(f"{'model':24s} {'scale':6s} {'bare ms/step':>12s} {'Lightning/bare':>15s}")
    for model in MODELS:
        for name, s in SCALES.items():
            ms = 1e3 * statistics.median(times[name][model, "bare"]) / (s.steps - s.warmup)
            print(f"{model:24s} {name:6s} {ms:12.2f} {ratio(times[name], model, 'Lightning'):14.2f}x")
    print(f"{ENCODER}, small, against the same bare loop:")
    for variant in EXTRAS:
        print(f"  {variant:50s} {ratio(times['small'], ENCODER, variant):6.2f}x")
