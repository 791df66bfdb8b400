"""The paper-width training step and a causal LM's forward pass on this machine's accelerator, beside the
arithmetic of analysis/paper_scale.py: what `scripts/gpu_check.sh` runs on a CUDA machine (on a CPU it runs
too, at whatever shape it is given, to check it).

    python -m benchmarks.gpu_check [--input-dim 4096] [--latents 65536] [--batch 4096] [--steps 5]

For fp32, TF32 and bf16-mixed (autocast, as `trainer.precision=bf16-mixed`), the ReLU SAE with decoder-norm L1
(the reasoning-features recipe) steps dense, then sparse with its encoder biases set for the paper's L0 of 86:
seconds a step (forward, backward, clipping, fused Adam), the TFLOP/s that makes of step_flops, and the
seconds the arithmetic predicts at 50% of an H100 SXM's peak. Then SmolLM2's forward pass in bf16, tokens/s.
The last line is one JSON object.
"""
import argparse
import json
import time

import torch

from analysis.paper_scale import H100_SXM_TFLOPS, PAPER_L0, step_flops
from benchmarks.speed import at_density
from lightning_modules.losses import CompositeLoss
from lightning_modules.sae import SparseAutoencoder

PRECISIONS = {"fp32": ("ieee", None), "tf32": ("tf32", None), "bf16": ("ieee", torch.bfloat16)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_seconds(model: SparseAutoencoder, x: torch.Tensor, steps: int, autocast_dtype) -> float:
    """Seconds a training step, the best of ``steps`` after one untimed step."""
    optimizer, best = model.configure_optimizers(), float("inf")
    for step in range(steps + 1):
        synchronize(x.device)
        started = time.perf_counter()
        with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            objective = model.loss(model(x))["objective"]
        optimizer.zero_grad()
        objective.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        model.normalize_weights()
        synchronize(x.device)
        if step:
            best = min(best, time.perf_counter() - started)
    return best


def harvest_tokens_per_second(device: torch.device, batch: int = 32, context: int = 128) -> float:
    from activations.language_model import load

    dtype = "bfloat16" if device.type == "cuda" else "float32"
    model, _ = load("smollm2", dtype=dtype, device=str(device))
    ids = torch.randint(model.config.vocab_size, (batch, context), device=device)
    best = float("inf")
    with torch.no_grad():
        for step in range(4):
            synchronize(device)
            started = time.perf_counter()
            model(ids)
            synchronize(device)
            if step:
                best = min(best, time.perf_counter() - started)
    return batch * context / best


def main(d: int, h: int, batch: int, steps: int, harvest: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{name}: {d} -> {h:,} latents, batch {batch}; seconds a step, best of {steps}")
    print(f"{'precision':10s} {'step':7s} {'measured s':>11s} {'TFLOP/s':>8s} {'H100 arithmetic s':>18s}")
    x = torch.randn(batch, d, device=device)
    results = {"device": name}
    for precision, (matmul, autocast_dtype) in PRECISIONS.items():
        torch.backends.cuda.matmul.fp32_precision = matmul
        for kind in ("dense", "sparse"):
            torch.manual_seed(0)
            model = SparseAutoencoder(d, h, CompositeLoss({"mse": 1.0, "l1_decnorm": 5.0}, reduction="mean"),
                                      lr=5e-5, sparse_below=0.05 if kind == "sparse" else 0.0).to(device)
            if kind == "sparse":
                at_density(model, x, PAPER_L0 / h)
            seconds = step_seconds(model, x, steps, autocast_dtype)
            flops = step_flops(batch, d, h, PAPER_L0 if kind == "sparse" else None)
            peak = H100_SXM_TFLOPS[precision.upper()] * 1e12
            results[f"{precision}_{kind}_s"] = round(seconds, 4)
            results[f"{precision}_{kind}_tflops"] = round(flops / seconds / 1e12, 2)
            print(f"{precision:10s} {kind:7s} {seconds:11.4f} {flops / seconds / 1e12:8.2f} {flops / (0.5 * peak):18.4f}")
            del model
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    if harvest:
        results["smollm2_forward_tokens_per_s"] = round(harvest_tokens_per_second(device))
        print(f"SmolLM2-135M forward, 32 x 128 tokens: {results['smollm2_forward_tokens_per_s']:,} tokens/s")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dim", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-harvest", action="store_true", help="skip SmolLM2's forward pass")
    args = parser.parse_args()
    print(json.dumps(main(args.input_dim, args.latents, args.batch, args.steps, not args.no_harvest)))
