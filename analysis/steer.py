"""Steering generation with one latent of an LM run: the causal LM continues a prompt greedily with the
latent's decoder direction added at the hooked layer (``mode=add``) or the latent clamped (``mode=clamp``),
at strength x the latent's largest activation on the test split (evaluation/steering.py), printed beside
the unsteered continuation and written to ``<run>/steering/feature<i>_<mode>_<strength>_<prompt>.md`` (the
prompt's first words and a hash of it).

    python -m analysis.steer run=<run dir> feature=<i> strength=<s> prompt="..." [mode=add] [max_new_tokens=40]
"""
import hashlib
import math
import re
import sys
import textwrap
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from activations.language_model import is_causal, load_config
from analysis.features import directions, lm_data
from analysis.stamp import stamp_line
from analysis.trained import run_config, trained_model
from runtime.errors import first_line
from evaluation.features import stream_codes
from evaluation.steering import MODES, generate, steer
from runtime.files import write_whole

COLUMN = 60  # characters per side when printed side by side


def largest_activation(model, x: torch.Tensor, feature: int) -> float:
    return max(float(codes[:, feature].max()) for _, codes in stream_codes(model, x))


def side_by_side(left: str, right: str) -> str:
    columns = [textwrap.wrap(text, COLUMN, replace_whitespace=False, drop_whitespace=False) or [""]
               for text in (left, right)]
    height = max(map(len, columns))
    rows = [f"{a.replace(chr(10), ' '):{COLUMN}s} | {b.replace(chr(10), ' ')}"
            for a, b in zip(*[column + [""] * (height - len(column)) for column in columns])]
    return "\n".join([f"{'unsteered':{COLUMN}s} | steered", "-" * (2 * COLUMN + 3), *rows])


def prompt_slug(prompt: str) -> str:
    """The prompt's first words and a hash of all of it, for a file name: two prompts never share one."""
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:32].rstrip("-")
    return f"{words or 'prompt'}-{hashlib.sha1(prompt.encode()).hexdigest()[:6]}"


def run(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.run)
    if not str(cfg.prompt or "").strip():
        raise ValueError("prompt is empty: steering continues a prompt, e.g. prompt=\"Let me think\"")
    if not math.isfinite(cfg.strength):
        raise ValueError(f"strength={cfg.strength} is not a finite number")
    if cfg.max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens={cfg.max_new_tokens} must be > 0")
    run_cfg = run_config(run_dir)
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode}: choose from {list(MODES)}")
    if "model" in run_cfg.data and "layer" in run_cfg.data and not is_causal(load_config(run_cfg.data.model)):
        raise ValueError(f"steering needs a causal LM: {run_cfg.data.model} is a sentence encoder, it does not generate")
    _, model = trained_model(run_dir)
    if not hasattr(model, "decoder_weight"):
        raise ValueError(f"steering adds a decoder direction: {type(model).__name__} has no decoder")
    latents = model.feature_directions().shape[0]
    if not 0 <= cfg.feature < latents:
        raise ValueError(f"feature={cfg.feature} out of range: the run's model has {latents} latents (0..{latents - 1})")
    data = lm_data(run_cfg, run_dir, cfg.harvest)
    peak = largest_activation(model, data.splits["test"][0], cfg.feature)
    if peak <= 0:
        raise ValueError(f"feature {cfg.feature} never fires on the test split: c = strength x its largest activation "
                         f"(0) adds nothing; pick a latent with a density above 0 in the feature browser")
    direction = directions(model)[0][cfg.feature]
    amount = cfg.strength * peak

    def activation(h: torch.Tensor) -> torch.Tensor:
        return model.codes(h.float())[:, cfg.feature]

    tokenizer, lm = data.tokenizer, data.lm
    if cfg.chat:
        input_ids = tokenizer.apply_chat_template([{"role": "user", "content": cfg.prompt}], add_generation_prompt=True,
                                                  return_tensors="pt")
    else:
        input_ids = tokenizer(cfg.prompt, return_tensors="pt").input_ids
    clean_ids = generate(lm, input_ids, cfg.max_new_tokens)
    clean = tokenizer.decode(clean_ids, skip_special_tokens=True)
    steered_ids = generate(lm, input_ids, cfg.max_new_tokens, {data.layer: data.modules[data.layer]},
                           steer(direction, amount, cfg.mode, activation))
    steered = tokenizer.decode(steered_ids, skip_special_tokens=True)
    print(f"prompt: {cfg.prompt!r}\nfeature {cfg.feature}, {cfg.mode} at strength {cfg.strength} x max activation "
          f"{peak:.3g} = {amount:.3g}, at {data.modules[data.layer]}\n")
    print(side_by_side(clean, steered))
    out = Path(cfg.out) if cfg.out else run_dir / "steering"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"feature{cfg.feature}_{cfg.mode}_{cfg.strength:g}_{prompt_slug(cfg.prompt)}.md"
    write_whole(path, f"# Feature {cfg.feature} of {run_dir.name}, {cfg.mode} at strength {cfg.strength:g}\n\n"
                f"{data.model_name} layer {data.layer} ({data.modules[data.layer]}); c = {cfg.strength:g} x the "
                f"latent's largest test activation {peak:.4g} = {amount:.4g}; greedy, at most {cfg.max_new_tokens} new "
                f"tokens: {len(clean_ids)} unsteered, {len(steered_ids)} steered (generation stops at the end-of-text "
                f"token).\n\nPrompt: {cfg.prompt!r}\n\n## Unsteered\n\n{clean}\n\n## Steered\n\n{steered}\n\n"
                f"{stamp_line()}\n")
    print(f"\nwrote {path}")
    return path


@hydra.main(version_base="1.3", config_path="../conf", config_name="steer")
def main(cfg: DictConfig) -> None:
    missing = [key for key in ("run", "feature", "prompt") if OmegaConf.is_missing(cfg, key)]
    if missing:
        sys.exit(f"error: {', '.join(missing)} missing: python -m analysis.steer run=<run folder> feature=<i> "
                 f"strength=<s> prompt=\"...\"")
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {first_line(error)}")


if __name__ == "__main__":
    main()
