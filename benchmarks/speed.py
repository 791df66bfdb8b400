"""Training speed side by side: the framework against a bare PyTorch loop, the machine's matmul peak and
SAELens, each comparison timed in interleaved rounds.

    python -m benchmarks.speed [--rounds 3] [--out results/speed/]

- mnist: 784 -> 64 latents, batch 128, on MNIST: every model, and every ablation configuration of the
  encoder, trained by the Trainer train.py builds from conf/ (its profiler, every callback of
  conf/callbacks/default.yaml, per-term logging to a CSV file, the finiteness guard) against a bare
  loop over the same module, loss, Adam and data (forward, loss, backward, step, the module's
  post-step renormalisation). Lightning's loop alone fits a module whose training step does nothing
  (EmptyStep) on the same batches with the same Trainer and the callbacks that do not read a code: a
  floor on what Lightning adds to a batch (the bare loop gathers its batch too), and bare / (bare +
  empty) a bound on the speed vs bare that a step of this bare cost can reach. Both loops gather
  batches with index_select, which is timed against plain indexing as well.
- lm: 512 -> 4096 latents, batch 4096, on Gaussian data: the ReLU SAE with decoder-norm-weighted L1 (its
  encoder biases set for a code density of 2%, as after its sparsity warm-up) and the TopK SAE (k 32), both
  with `sparse_below` 0.05 (their steps sparse), gradient clipping at 1.0: Lightning against the bare loop,
  against the same Trainer with dense steps, against SAELens's training step on the same SAE and weights (its
  `training_forward_pass`, backward, clipping and Adam), against one dense encoder matmul of the step's shape
  (`vs_matmul_floor`: the step's one unavoidable product), and the step's FLOP rate (the matmuls it really
  runs: step_flops) against this machine's fp32 matmul rate (the best round's). TopK also at 576 -> 9216
  (SmolLM2's width at 16x) against SAELens and the floor. Every variant runs with train.py's allocator
  setting (runtime/allocator.py).
- allocator: the same bare loops in new processes, with train.py's allocator setting and with glibc's
  default, where each of the step's 64 MB tensors gets fresh pages from the kernel.

Every ratio is a ratio of speeds (steps/s over the reference's steps/s): higher is better, 1.0 is
parity; the median over rounds of the ratio within each round. The last line is one JSON object;
``--out`` also writes it, with the seconds and the date, commit and machine, to ``<out>/speed.json``.
Machines are noisy: compare ratios, not seconds, and rerun on a quiet machine.
"""
import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from runtime.allocator import reuse_freed_memory
from analysis.paper_scale import step_flops
from analysis.stamp import write_json_result
from datamodules.gaussian_mixture import GaussianMixtureDataModule
from datamodules.mnist import MNISTDataModule
from lightning_modules.encoder import DecoderFreeEncoder
from lightning_modules.losses import CompositeLoss
from lightning_modules.sae import (BatchTopKSAE, GatedSAE, JumpReLUSAE, MatryoshkaSAE, SparseAutoencoder,
                                   TopKSAE)
from runtime import resolvers  # noqa: F401  (conf/train.yaml's)
from runtime.job import make_callbacks

CONF = Path(__file__).parents[1] / "conf"

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
logging.getLogger("callbacks.progress").setLevel(logging.ERROR)
# the untimed end-of-fit read-out warns that its 1000 train examples are fewer than the LM latents
logging.getLogger("callbacks.final_evaluation").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

ABLATION = {"lse": {"lse": 1}, "lse_var": {"lse": 1, "variance": 1}, "lse_var_tc": {"lse": 1, "variance": 1,
            "decorrelation": 1}, "var_tc": {"variance": 1, "decorrelation": 1}}


def sae_loss(**terms) -> CompositeLoss:
    return CompositeLoss({"mse": 1, **terms}, reduction="mean")


MNIST_MODELS = {  # as conf/model and conf/loss build them at their defaults
    **{f"encoder {name}": lambda h, w=weights: DecoderFreeEncoder(784, h, CompositeLoss(w, reduction="sum"))
       for name, weights in ABLATION.items()},
    "sae": lambda h: SparseAutoencoder(784, h, sae_loss(l1=0.8)),
    "sae_tied": lambda h: SparseAutoencoder(784, h, sae_loss(l1=0.8), tied=True),
    "jumprelu": lambda h: JumpReLUSAE(784, h, sae_loss(l0=0.3), threshold=0.5, unit_norm_decoder=True),
    "topk": lambda h: TopKSAE(784, h, sae_loss(auxk=1 / 32), k=8, unit_norm_decoder=True),
    "batchtopk": lambda h: BatchTopKSAE(784, h, sae_loss(auxk=1 / 32), k=8, unit_norm_decoder=True),
    "matryoshka": lambda h: MatryoshkaSAE(784, h, CompositeLoss({"mse": 0, "matryoshka": 1, "auxk": 1 / 32}),
                                          k=8, unit_norm_decoder=True),
    "gated": lambda h: GatedSAE(784, h, sae_loss(gate_l1=2, gate_aux=1), unit_norm_decoder=True),
}
SPARSE_BELOW = 0.05  # the LM models step sparse while at most 5% of their code's entries are active
LM_DENSITY = 0.02  # the ReLU SAE's code density: an LM SAE's after its sparsity warm-up (L0 ~ 1-2% of its latents)
LM_MODELS = {
    "sae l1_decnorm": lambda d, h: SparseAutoencoder(d, h, sae_loss(l1_decnorm=5.0), lr=5e-5,
                                                     sparse_below=SPARSE_BELOW),
    "topk k32": lambda d, h: TopKSAE(d, h, sae_loss(auxk=1 / 32), k=32, lr=5e-5, unit_norm_decoder=True,
                                     sparse_below=SPARSE_BELOW),
}


def lm_model(name: str, d: int, h: int, data) -> SparseAutoencoder:
    """An LM model as it is after warm-up: the ReLU SAE's encoder biases set so that each latent fires on
    LM_DENSITY of the examples."""
    module = LM_MODELS[name](d, h)
    if name.startswith("sae"):
        at_density(module, data.splits["train"][0][:4096], LM_DENSITY)
    return module


def at_density(module: SparseAutoencoder, x: torch.Tensor, density: float) -> None:
    """Encoder biases that leave each latent active on ``density`` of the rows of x."""
    with torch.no_grad():
        z = module.preactivation(x) - module.encoder.bias
        module.encoder.bias.copy_(-z.kthvalue(max(1, round((1 - density) * len(x))), dim=0).values)


def bare(module, data, steps: int, warmup: int, clip: float | None = None) -> float:
    """Seconds for steps - warmup steps of the plainest loop over the module's own parts."""
    optimizer = module.configure_optimizers()
    x = data.splits["train"][0]
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        batch = x.index_select(0, torch.randint(len(x), (data.batch_size,)))  # as the datamodules gather
        loss = module.loss(module(batch))["objective"]
        optimizer.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        module.normalize_weights()
    return time.perf_counter() - start


class Clock(pl.Callback):
    """Times the steps from the first batch that starts at or past ``warmup``."""

    def __init__(self, warmup: int):
        self.warmup, self.first_step = warmup, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_step is None and trainer.global_step >= self.warmup:
            self.first_step, self.start = trainer.global_step, time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds_per_step = (time.perf_counter() - self.start) / (trainer.global_step - self.first_step)


def framework(folder: str, overrides: tuple[str, ...] = ()) -> DictConfig:
    """train.py's configuration from conf/ (the trainer with its profiler, and the callbacks), for a fit in
    ``folder`` whose steps are timed: the CSV logger, no validation, and the writes that happen between
    steps in a real run (checkpoints) or at its end (figures, probes) kept out of the timing or cheap."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[
            f"paths.output_dir={folder}", "logger=csv", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
            "checkpoint.every_n_steps=1000000000", "+callbacks.checkpoint.every_n_epochs=1000000",
            "callbacks.unit_metrics.label=benchmark", "callbacks.unit_metrics.figures=false",
            "callbacks.final_evaluation.probe=false", "callbacks.final_evaluation.max_examples=1000", *overrides])


def lightning(module, data, steps: int, warmup: int, clip: float | None = None,
              overrides: tuple[str, ...] = ()) -> float:
    """Seconds for steps - warmup steps of train.py's Trainer and callbacks."""
    clock = Clock(warmup)  # first, so that the clock stops before the end-of-fit read-outs
    module.gradient_clip_val = clip
    with tempfile.TemporaryDirectory() as folder:
        cfg = framework(folder, (f"+trainer.max_steps={steps}", *overrides))
        trainer = instantiate(cfg.trainer, callbacks=[clock, *make_callbacks(cfg, None).values()], logger=instantiate(cfg.logger))
        trainer.fit(module, datamodule=data)
    return clock.seconds_per_step * (steps - warmup)


class EmptyStep(pl.LightningModule):
    """Steps an optimiser over one scalar, through Lightning's optimiser wrapper as SparseCoder does (the
    trainer counts those steps), and nothing else."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.scalar = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        self.optimizers().step()

    def configure_optimizers(self):
        return torch.optim.SGD([self.scalar], lr=0.0)


def dense(module, data, steps: int, warmup: int, clip: float | None = None) -> float:
    """train.py's Trainer with every step dense (``sparse_below`` 0)."""
    module.sparse_below = 0.0
    return lightning(module, data, steps, warmup, clip)


def empty(module, data, steps: int, warmup: int, clip: float | None = None) -> float:
    """The same Trainer, without the callbacks that read a sparse code (EmptyStep has none)."""
    return lightning(EmptyStep(), data, steps, warmup, overrides=("~callbacks.unit_metrics",
                                                                  "~callbacks.final_evaluation"))


def saelens(module, data, steps: int, warmup: int, clip: float | None = None) -> float:
    """SAELens's training step (sae_lens/training/sae_trainer.py `_train_step`) on an SAE of the same
    shape: training_forward_pass, backward, gradient clipping, Adam at the same lr."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d, h = module.hparams.input_dim, module.hparams.hidden_dim
    if isinstance(module, TopKSAE):
        sae, coefficients = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=h, k=module.k)), {}
    else:
        sae, coefficients = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=h)), {"l1": 5.0}
    with torch.no_grad():  # the same weights, so the same code density
        for mine, theirs in ((module.encoder.weight.T, sae.W_enc), (module.encoder.bias, sae.b_enc),
                             (module.decoder_rows(), sae.W_dec), (module.b_dec, sae.b_dec)):
            theirs.copy_(mine)
    optimizer = torch.optim.Adam(sae.parameters(), lr=module.lr)
    x = data.splits["train"][0]
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        batch = x.index_select(0, torch.randint(len(x), (data.batch_size,)))
        optimizer.zero_grad()
        output = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients=coefficients,
                                                          dead_neuron_mask=None, n_training_steps=step,
                                                          is_logging_step=False))
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), clip)
        optimizer.step()
    return time.perf_counter() - start


ALLOCATOR_CHILD = """
import json, torch
from runtime.allocator import reuse_freed_memory
from analysis.stamp import write_json_result
from benchmarks.speed import LM_MODELS, bare, lm_data, lm_model
if {reuse}:
    reuse_freed_memory()
data, seconds = lm_data({d}, {batch}), {{}}
for name in LM_MODELS:
    torch.manual_seed(0)
    seconds[name] = bare(lm_model(name, {d}, {h}, data), data, {steps}, {warmup}, clip=1.0) / ({steps} - {warmup})
print(json.dumps(seconds))
"""


def bare_in_new_process(reuse: bool, d: int, h: int, batch: int, steps: int, warmup: int) -> dict[str, float]:
    """Seconds a step of the bare loop of each LM model, in a new process with or without train.py's allocator
    setting. A process that has run anything big holds freed heap memory, which glibc hands out before it
    consults its mmap threshold: only a new process shows the default."""
    code = ALLOCATOR_CHILD.format(reuse=reuse, d=d, h=h, batch=batch, steps=steps, warmup=warmup)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parents[1])
    return json.loads(child.stdout.splitlines()[-1])


def lm_data(d: int, batch: int) -> GaussianMixtureDataModule:
    data = GaussianMixtureDataModule(input_dim=d, n_train=8 * batch, n_val=batch, n_test=batch, batch_size=batch,
                                     eval_batch_size=batch, seed=0)
    data.setup("fit")
    return data


def matmul(module, data, steps: int, warmup: int, clip: float | None = None) -> float:
    """Seconds for steps - warmup fp32 matmuls of the step's largest shape alone, x [batch, d] @ W [d, h]:
    the machine's matmul rate, timed in the same rounds as the steps."""
    x, w = torch.randn(data.batch_size, module.hparams.input_dim), torch.randn(module.hparams.input_dim,
                                                                                module.hparams.hidden_dim)
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        x @ w
    return time.perf_counter() - start


def gather_speed(x, batch_size: int, rounds: int) -> float:
    """Speed of the datamodules' batch gather, x.index_select(0, rows), over x[rows], a pass over a
    shuffled epoch each, interleaved."""
    order = torch.randperm(len(x))
    chunks = order[:len(x) // batch_size * batch_size].split(batch_size)

    def seconds(gather) -> float:
        start = time.perf_counter()
        for chunk in chunks:
            gather(chunk)
        return time.perf_counter() - start

    ratios = []
    for _ in range(rounds):
        indexing, selecting = seconds(lambda rows: x[rows]), seconds(lambda rows: x.index_select(0, rows))
        ratios.append(indexing / selecting)
    return statistics.median(ratios)


def interleaved(variants: dict, build, data, steps: int, warmup: int, rounds: int, **options) -> dict:
    """Seconds per variant per round, each variant on a freshly built module with the same seed."""
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            torch.manual_seed(0)
            times[name].append(run(build(), data, steps, warmup, **options) / (steps - warmup))
    return times


def speed_ratio(times: dict, variant: str, reference: str) -> float:
    return statistics.median(ref / t for t, ref in zip(times[variant], times[reference]))


def main(rounds: int) -> tuple[dict, dict]:
    results, seconds, started = {}, {}, time.perf_counter()
    reuse_freed_memory()  # as train.py does
    print(f"torch {torch.__version__}, lightning {pl.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores before the run")

    mnist = MNISTDataModule(input_dim=784, batch_size=128, eval_batch_size=5000, seed=0)
    mnist.setup("fit")
    variants = {"bare": bare, "lightning": lightning, "empty": empty}
    print("\nmnist: 784 -> 64, batch 128; ms/step and speed vs the bare loop")
    print(f"{'model':20s} {'bare ms':>8s} {'Lightning ms':>13s} {'empty step ms':>14s} {'vs bare':>8s} {'bound':>6s}")
    mnist_ratios, bounds = {}, {}
    for name, build in MNIST_MODELS.items():
        # the last 600 of 1020 steps: by 420 the lse configuration's units are dead (a learned state); 200-step
        # windows left single ratios 0.2 apart between runs
        times = interleaved(variants, lambda b=build: b(64), mnist, 1020, 420, rounds)
        seconds[f"mnist_{name}"] = times
        mnist_ratios[name] = speed_ratio(times, "lightning", "bare")
        bounds[name] = statistics.median(b / (b + e) for b, e in zip(times["bare"], times["empty"]))
        print(f"{name:20s} {1e3 * min(times['bare']):8.3f} {1e3 * min(times['lightning']):13.3f} "
              f"{1e3 * min(times['empty']):14.3f} {mnist_ratios[name]:7.2f}x {bounds[name]:5.2f}x")
        results[f"mnist_{name.replace(' ', '_')}_vs_bare"] = round(mnist_ratios[name], 3)
    results["mnist_vs_bare"] = round(min(mnist_ratios.values()), 3)
    results["mnist_bound_vs_bare"] = round(min(bounds.values()), 3)  # the tightest of them
    results["mnist_gather_vs_indexing"] = round(gather_speed(mnist.splits["train"][0], 128, 2 * rounds + 1), 3)
    print(f"batch gather, index_select vs x[rows] (an epoch of 128-row batches): "
          f"{results['mnist_gather_vs_indexing']:.2f}x")

    d, h, batch = 512, 4096, 4096
    lm = lm_data(d, batch)
    print(f"\nlm: {d} -> {h}, batch {batch}, clip 1.0, ReLU SAE at code density {LM_DENSITY}; s/step, speeds vs "
          f"the bare loop, SAELens, the same Trainer with dense steps, one dense encoder matmul")
    print(f"{'model':16s} {'bare s':>7s} {'Lightning s':>12s} {'dense s':>8s} {'SAELens s':>10s} {'vs bare':>8s} "
          f"{'vs SAELens':>11s} {'vs dense':>9s} {'vs matmul':>10s} {'GEMM %':>7s}")
    peaks = []
    for name in LM_MODELS:
        times = interleaved({"bare": bare, "lightning": lightning, "dense": dense, "saelens": saelens,
                             "matmul": matmul}, lambda n=name: lm_model(n, d, h, lm), lm, 6, 2, rounds, clip=1.0)
        seconds[f"lm_{name}"] = times
        peaks.append(2 * batch * d * h / min(times["matmul"]))  # the best rate any round saw
        active = 32 if name.startswith("topk") else LM_DENSITY * h
        gemm = step_flops(batch, d, h, active) / min(times["lightning"]) / max(peaks)
        key = name.split()[0]
        for reference in ("bare", "saelens", "dense"):
            results[f"lm_{key}_vs_{reference}"] = round(speed_ratio(times, "lightning", reference), 3)
        results[f"lm_{key}_vs_matmul_floor"] = round(speed_ratio(times, "lightning", "matmul"), 3)
        results[f"lm_{key}_gemm_fraction"] = round(gemm, 3)
        print(f"{name:16s} {min(times['bare']):7.3f} {min(times['lightning']):12.3f} {min(times['dense']):8.3f} "
              f"{min(times['saelens']):10.3f} " + " ".join(
                  f"{results[f'lm_{key}_vs_{reference}']:{width}.2f}x" for reference, width in
                  (("bare", 7), ("saelens", 10), ("dense", 8), ("matmul_floor", 9))) + f" {100 * gemm:6.1f}%")
    results["lm_vs_bare"] = min(results["lm_sae_vs_bare"], results["lm_topk_vs_bare"])
    results["lm_vs_saelens"] = min(results["lm_sae_vs_saelens"], results["lm_topk_vs_saelens"])
    print(f"fp32 matmul peak, [{batch}, {d}] @ [{d}, {h}] alone, best round: {max(peaks) / 1e9:.0f} GFLOP/s")

    wide_d, wide_h = 576, 9216  # SmolLM2's width at 16x
    wide = lm_data(wide_d, batch)
    times = interleaved({"lightning": lightning, "saelens": saelens, "matmul": matmul},
                        lambda: lm_model("topk k32", wide_d, wide_h, wide), wide, 6, 2, rounds, clip=1.0)
    seconds["lm_topk k32 576x9216"] = times
    results["lm_topk_9216_vs_saelens"] = round(speed_ratio(times, "lightning", "saelens"), 3)
    results["lm_topk_9216_vs_matmul_floor"] = round(speed_ratio(times, "lightning", "matmul"), 3)
    print(f"topk k32 at {wide_d} -> {wide_h}: Lightning {min(times['lightning']):.3f} s, SAELens "
          f"{min(times['saelens']):.3f} s, one encoder matmul {min(times['matmul']):.3f} s: "
          f"{results['lm_topk_9216_vs_saelens']:.2f}x SAELens, {results['lm_topk_9216_vs_matmul_floor']:.2f} of the floor")

    print(f"\nallocator: the bare loop at {d} -> {h} in new processes, train.py's reuse_freed_memory (runtime/allocator.py) "
          f"against glibc's default; s/step")
    print(f"{'model':16s} {'glibc default s':>16s} {'reuse s':>8s} {'reuse vs default':>17s}")
    runs = {"default": [], "reuse": []}
    for _ in range(rounds):
        for variant in runs:
            runs[variant].append(bare_in_new_process(variant == "reuse", d, h, batch, 6, 2))
    for name in LM_MODELS:
        times = {variant: [seconds[name] for seconds in runs[variant]] for variant in runs}
        key = f"lm_{name.split()[0]}_reuse_vs_glibc_default"
        results[key] = round(speed_ratio(times, "reuse", "default"), 3)
        print(f"{name:16s} {min(times['default']):16.3f} {min(times['reuse']):8.3f} {results[key]:16.2f}x")
    print(f"{time.perf_counter() - started:.0f} s in all")
    return results, seconds


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="a folder: also write the ratios, the seconds and the stamp to <out>/speed.json")
    args = parser.parse_args()
    results, seconds = main(args.rounds)
    if args.out:
        print(f"wrote {write_json_result(Path(args.out) / 'speed.json', results | {'seconds': seconds})}")
    print(json.dumps(results))
