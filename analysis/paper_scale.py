"""The arithmetic to plan `experiment=reasoning_features` on a GPU: FLOPs and wall time per step and for
the whole run, GPU memory, the harvest, from the experiment's own configuration and an accelerator's
documented dense peaks (an H100 SXM by default), at a stated fraction of peak.

    python -m analysis.paper_scale [out=results/paper_scale.md] [tokens=1e9] [efficiency=0.5]

With ``run=<folder>`` (a run of `train.py experiment=paper_width`, or any SAE run) it checks the arithmetic
on the machine it runs on instead: the run's measured step time against its step's FLOPs at this machine's
own matmul rate, and its peak memory against its weights, gradients and Adam state.

    python -m analysis.paper_scale run=<folder> [out=results/paper_width.md]

It prints the Markdown, and writes it stamped with the date, commit and machine where ``out`` is given.
"""
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from analysis.runs import Run, read_run
from analysis.stamp import stamp_line
from runtime.files import write_whole

CONF = Path(__file__).resolve().parents[1] / "conf"
H100_SXM_TFLOPS = {"FP32": 67, "TF32": 495, "BF16": 989}  # NVIDIA's H100 datasheet, dense
GPU_MEMORY_GB = 80
LLAMA_8B_PARAMETERS, LLAMA_8B_LAYERS = 8.0e9, 32
PAPER_L0 = 86  # the reasoning-features SAE's active latents per token


def step_flops(batch: int, d: int, h: int, active: float | None = None) -> float:
    """The matmul FLOPs of a training step. Dense: five B·d·h products (encoder and decoder forward, both
    weight gradients, the decoder's input gradient; b_dec's gradient through the encoder is a matrix-vector
    product, so the encoder needs no input gradient). Sparse (``model.sparse_below``), ``active`` latents per
    example: the encoder's forward, and four products over the active entries only (the encoder's weight
    gradient, the decode, its gradients to the code and to the decoder)."""
    if active is None:
        return 5 * 2 * batch * d * h
    return 2 * batch * d * h + 4 * 2 * batch * active * d


def arithmetic(d: int, h: int, batch: int, layer: int, tokens: float, efficiency: float) -> str:
    matmul = 2 * batch * d * h
    step, sparse_step = step_flops(batch, d, h), step_flops(batch, d, h, PAPER_L0)
    steps = tokens / batch
    parameters = 2 * d * h + h + d
    weights_gb = 4 * parameters / 1e9
    code_gb = 4 * batch * h / 1e9
    harvest = 2 * LLAMA_8B_PARAMETERS * (layer + 1) / LLAMA_8B_LAYERS  # FLOPs a token, up to the hooked block
    lines = [
        f"# Paper scale, on paper: {d} -> {h:,} latents, batch {batch}, {tokens:.3g} tokens",
        "",
        f"From `conf/experiment/reasoning_features.yaml` and the H100 SXM's dense peaks "
        f"({', '.join(f'{name} {tflops} TFLOP/s' for name, tflops in H100_SXM_TFLOPS.items())}), "
        f"at {efficiency:.0%} of peak.",
        "",
        f"- FLOPs a dense step: 5 matmuls of B·d·h (b_dec's gradient through the encoder is a matrix-vector "
        f"product), 2·{batch}·{d}·{h} = {matmul / 1e12:.2f} TFLOP each: "
        f"**{step / 1e12:.1f} TFLOP a step**; {steps:,.0f} steps.",
        f"- FLOPs a sparse step (`model.sparse_below`, once the code is at most 5% active, at the paper's L0 of "
        f"{PAPER_L0}): the encoder's forward and four products over the active entries, "
        f"**{sparse_step / 1e12:.2f} TFLOP a step**, {step / sparse_step:.1f}x fewer; its sparse products run "
        f"nearer memory speed than matmul peak, so the times below bound it from below.",
    ]
    for name in ("FP32", "TF32", "BF16"):
        seconds, sparse = (flops / (H100_SXM_TFLOPS[name] * 1e12 * efficiency) for flops in (step, sparse_step))
        lines.append(f"- {name}: {seconds:.3f} s a dense step ({1 / seconds:.1f} steps/s), **{seconds * steps / 3600:.1f} h** "
                     f"for the run; sparse {sparse:.3f} s, {sparse * steps / 3600:.1f} h.")
    lines += [
        f"- Parameters: {parameters / 1e6:,.0f}M, {weights_gb:.1f} GB in FP32; with gradients and Adam's two moments "
        f"**{4 * weights_gb:.1f} GB**.",
        f"- A batch's code: each {batch} x {h:,} FP32 tensor (pre-activations, codes, their gradients) is "
        f"{code_gb:.2f} GB; four of them bring the total to about **{4 * weights_gb + 4 * code_gb:.0f} GB** of "
        f"{GPU_MEMORY_GB}.",
        f"- Harvest: about 2 FLOPs per parameter per token up to block {layer} of {LLAMA_8B_LAYERS} (the forward "
        f"pass stops after the hooked block): {harvest / 1e9:.1f} GFLOP a token, **{harvest * tokens / (H100_SXM_TFLOPS['BF16'] * 1e12 * efficiency) / 3600:.1f} h** "
        f"in BF16; cached in FP16 the activations are **{2 * d * tokens / 1e12:.1f} TB**, so at this scale they "
        f"are harvested on the fly (`data.cache=false`).",
    ]
    return "\n".join(lines) + "\n"


def matmul_rate(batch: int, d: int, h: int, repeats: int = 3) -> float:
    """FLOP/s of one float32 [batch x d] @ [d x h] product on this machine's CPU, the best of ``repeats``
    after a warm-up."""
    x, weight = torch.randn(batch, d), torch.randn(d, h)
    best = float("inf")
    for _ in range(repeats + 1):
        started = time.perf_counter()
        x @ weight
        best = min(best, time.perf_counter() - started)
    return 2 * batch * d * h / best


def sae_run(folder: Path) -> Run:
    """The finished SAE run in ``folder``, or one error line."""
    if not (folder / "metrics.json").is_file():
        sys.exit(f"error: {folder} is not a finished run folder (it holds no metrics.json)")
    run = read_run(folder, (), ("an SAE run (the arithmetic is an SAE step's)",
                                lambda run: run.config["model"]["_target_"].startswith("lightning_modules.sae.")))
    if isinstance(run, str):
        sys.exit(f"error: {folder} cannot be checked: {run}")
    return run


def measured_check(run: Run) -> str:
    """The run's step time against the arithmetic at this machine's matmul rate, and its peak memory
    against its training state (weights, gradients, Adam's two moments: four float32 copies)."""
    metrics, data, model = run.metrics, run.config["data"], run.config["model"]
    batch, d, h, steps = data["batch_size"], data["input_dim"], model["hidden_dim"], metrics["global_step"]
    l0, measured_on = (metrics["train/l0"], "last logged training batch") if "train/l0" in metrics else \
        (metrics["l0"], "validation split")
    density = l0 / h
    sparse_below = model.get("sparse_below", 0.0)
    sparse = density <= sparse_below
    flops = step_flops(batch, d, h, l0 if sparse else None)
    seconds = metrics["time"]["training_steps"] / steps
    rate = matmul_rate(batch, d, h)
    state_gib = 4 * 4 * metrics["params"] / 2**30
    return "\n".join([
        f"# The arithmetic checked on this machine: {d} -> {h:,} latents, batch {batch}",
        "",
        f"From the run `{run.path}` ({steps} steps) and one [{batch} x {d}] @ [{d} x {h:,}] float32 product timed here.",
        "",
        f"- Measured: {metrics['time']['training_steps']:.1f} s of training steps, **{seconds:.2f} s a step** (the "
        f"first one also allocates Adam's moments).",
        f"- The arithmetic: a {'sparse' if sparse else 'dense'} step (the code of its {measured_on} {density:.1%} active, "
        f"`model.sparse_below` {sparse_below}) is {flops / 1e12:.2f} TFLOP; at this machine's "
        f"matmul rate, {rate / 1e9:.0f} GFLOP/s, it takes **{flops / rate:.2f} s**: measured / arithmetic = "
        f"**{seconds * rate / flops:.2f}**.",
        f"- Peak memory: **{metrics['peak_rss_gb']:.2f} GiB** resident, against {state_gib:.2f} GiB of weights, "
        f"gradients and Adam's moments: **{metrics['peak_rss_gb'] / state_gib:.2f}x**.",
    ]) + "\n"


def main(args: list[str]) -> None:
    options = dict(arg.split("=", 1) for arg in args)
    unknown = set(options) - {"out", "tokens", "efficiency", "run"}
    if unknown:
        sys.exit(f"error: unknown option(s) {sorted(unknown)}; use out=, tokens=, efficiency=, run=")
    if "run" in options:
        text = measured_check(sae_run(Path(options["run"])))
    else:
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=["experiment=reasoning_features"])
        text = arithmetic(cfg.data.input_dim, cfg.model.hidden_dim, cfg.data.batch_size, cfg.data.layer,
                          float(options.get("tokens", 1e9)), float(options.get("efficiency", 0.5)))
    if "out" in options:
        path = Path(options["out"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, text + f"\n{stamp_line()}\n")
        print(f"wrote {path}")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
