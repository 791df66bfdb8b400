"""Does steering with the reasoning latents change how the model reasons, more than steering with any latent
does? As Galichin et al. (arXiv 2503.18878) check their ReasonScore features, with the baseline their
account lacks: the top-``k`` ReasonScore latents of an LM run, and ``k`` random latents each matched to one
of them in firing density (within a factor ``density_factor``), each added along its decoder direction at
``strength`` x its largest test activation (evaluation/steering.py, mode add), while the model answers
held-out checkable problems greedily through its chat template. Per strength and group it reports

    reasoning words per 100 tokens  (ReasonScore's words, whole words, any case, in the answer)
    answer length                   (generated tokens)
    accuracy                        (the answer's last number / yes-no / name against the problem's answer)

each the mean over the group's latents and the prompts, ± the standard error over prompts (each prompt's
value averaged over the group's latents first). Strength 0 is the unsteered model, once for both groups.

    python -m analysis.steering_effect run=<run dir> [k=3] [strengths=[0,0.25,0.5,1]] [prompts=24] [out=<dir>]

Writes ``steering.md`` (the table), ``steering.json`` (every answer) and ``steering.png``/``.pdf`` (strength on
x, one line per group) into ``<run>/steering_effect/`` or ``out``. ReasonScore's settings are the browser's
(conf/features.yaml: words, window, fold, alpha, split)."""
import json
import math
import re
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from activations import prompt_sets
from activations.decoding import chat_prompt_ids, decode, end_of_turn_ids, left_padded
from activations.generated_corpus import PREFIX, Decoding, prompt_set_name
from activations.language_model import hooks, is_causal
from analysis.features import check_reason_settings, directions, lm_data, reason_sums
from analysis.stamp import runs_line, stamp, stamp_line
from analysis.trained import run_config, trained_model
from evaluation.plots import save_figure
from evaluation.reason_score import reason_score
from evaluation.steering import steer
from runtime.errors import first_line
from runtime.files import write_whole

GROUPS = ("ReasonScore top-k", "random, matched density")
METRICS = {"reasoning_words_per_100": "reasoning words per 100 tokens", "length": "answer length (tokens)",
           "correct": "accuracy"}


def check(cfg: DictConfig) -> None:
    check_reason_settings(cfg)
    if cfg.k < 1 or cfg.prompts < 1 or cfg.max_new_tokens < 1 or cfg.batch_size < 1:
        raise ValueError(f"k={cfg.k}, prompts={cfg.prompts}, max_new_tokens={cfg.max_new_tokens} and "
                         f"batch_size={cfg.batch_size} must be >= 1")
    strengths = list(cfg.strengths or [])
    if not strengths or any(not math.isfinite(s) or s < 0 for s in strengths):
        raise ValueError(f"strengths={strengths} must be a list of finite numbers >= 0 (0: the unsteered model)")
    if cfg.density_factor <= 1:
        raise ValueError(f"density_factor={cfg.density_factor} must be > 1 (a random latent's density within "
                         f"that factor of its top latent's)")
    if cfg.prompt_set not in prompt_sets.SETS or cfg.prompt_set == "open":
        raise ValueError(f"prompt_set={cfg.prompt_set}: steering scores answers, so it needs a set of checkable "
                         f"problems: {sorted(set(prompt_sets.SETS) - {'open'})}")


def held_out_prompts(cfg: DictConfig, run_cfg: DictConfig) -> list[prompt_sets.Prompt]:
    """Checkable problems the run's SAE never read: none whose text is in the run's generated corpus."""
    corpus = run_cfg.data.get("corpus", "pydocs")
    sources = [corpus] if isinstance(corpus, str) else list(corpus)
    decoding = Decoding(**(run_cfg.data.get("generation") or {}))  # the run's, its defaults where it set none
    seen = {p.text for source in sources if source.startswith(PREFIX)
            for p in prompt_sets.build(prompt_set_name(source), decoding.prompts, decoding.seed)}
    if cfg.prompt_seed == decoding.seed and seen:
        raise ValueError(f"prompt_seed={cfg.prompt_seed} is the seed of the run's generated corpus: pick another, "
                         f"so that the steering prompts are held out")
    problems = [p for p in prompt_sets.build(cfg.prompt_set, cfg.prompts * 3, cfg.prompt_seed, exclude=seen)
                if p.answer is not None]
    return problems[:cfg.prompts]


def matched_random(density: torch.Tensor, top: list[int], factor: float, seed: int) -> list[int]:
    """For each top latent, a random other firing latent whose density is within ``factor`` of its own (the
    nearest in log density when none is), none chosen twice."""
    generator = torch.Generator().manual_seed(seed)
    taken = set(top)
    chosen = []
    for latent in top:
        ratio = (density / density[latent]).log().abs()
        free = torch.tensor([i not in taken and bool(density[i] > 0) for i in range(len(density))])
        near = torch.nonzero(free & (ratio <= math.log(factor))).squeeze(1)
        if len(near) == 0:
            near = torch.nonzero(free).squeeze(1)[ratio[free].argmin()].view(1)
        pick = int(near[torch.randint(len(near), (1,), generator=generator)])
        taken.add(pick)
        chosen.append(pick)
    return chosen


def word_pattern(words) -> re.Pattern:
    forms = sorted({word.strip().lower() for word in words}, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(form) for form in forms) + r")\b", re.IGNORECASE)


def answer_row(prompt, tokens: list[int], end_ids: set[int], tokenizer, pattern: re.Pattern) -> dict:
    ended = bool(tokens) and tokens[-1] in end_ids
    text = tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=True)
    length = len(tokens) - ended
    return {"prompt": prompt.text, "answer": prompt.answer, "response": text, "length": length, "ended": ended,
            "reasoning_words_per_100": 100 * len(pattern.findall(text)) / max(length, 1),
            "correct": float(prompt_sets.is_correct(text, prompt))}


def answers(data, rows: list[list[int]], end_ids: set[int], cfg, replace=None) -> list[list[int]]:
    """Greedy answers to the chat prompts ``rows``, steered by ``replace`` at the run's layer where given."""
    steered = hooks(data.lm, {data.layer: data.modules[data.layer]}, replace=replace) if replace else nullcontext()
    out = []
    with steered:
        for begin in range(0, len(rows), cfg.batch_size):
            input_ids, mask = left_padded(rows[begin:begin + cfg.batch_size], data.tokenizer.pad_token_id)
            out += decode(data.lm, input_ids, mask, cfg.max_new_tokens, end_ids)
    return out


def summarise(rows: list[dict], groups: dict[str, list[int]], strengths: list[float]) -> dict:
    """Per group, strength and metric: the mean and the standard error over prompts."""
    summary = {}
    for group in GROUPS:
        for strength in strengths:
            picked = [r for r in rows if r["strength"] == strength and (strength == 0 or r["group"] == group)]
            for metric in METRICS:
                per_prompt = {}
                for r in picked:
                    per_prompt.setdefault(r["prompt"], []).append(r[metric])
                values = np.array([np.mean(v) for v in per_prompt.values()])
                se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
                summary[f"{group}|{strength:g}|{metric}"] = {"mean": float(values.mean()), "se": se}
    return summary


def table(summary: dict, groups: dict[str, list[int]], density: torch.Tensor, strengths: list[float]) -> str:
    lines = ["| group | latents (density) | strength | reasoning words / 100 tokens | answer length | accuracy |",
             "|---|---|---|---|---|---|"]
    for group, latents in groups.items():
        named = ", ".join(f"{i} ({float(density[i]):.2g})" for i in latents)
        for strength in strengths:
            cells = [f"{summary[f'{group}|{strength:g}|{m}']['mean']:.3g} ± {summary[f'{group}|{strength:g}|{m}']['se']:.2g}"
                     for m in METRICS]
            lines.append(f"| {group} | {named} | {strength:g} | {' | '.join(cells)} |")
    return "\n".join(lines)


def figure(summary: dict, strengths: list[float], title: str):
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
    for ax, (metric, label) in zip(axes, METRICS.items()):
        for group, style in zip(GROUPS, ("o-", "s--")):
            stats = [summary[f"{group}|{s:g}|{metric}"] for s in strengths]
            ax.errorbar(strengths, [v["mean"] for v in stats], yerr=[v["se"] for v in stats], fmt=style, capsize=3,
                        label=group)
        ax.set_xlabel("strength (x the latent's largest test activation)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def measure(cfg: DictConfig) -> Path:
    started = time.time()
    check(cfg)
    run_dir = Path(cfg.run)
    run_cfg = run_config(run_dir)
    if "model" not in run_cfg.data or "layer" not in run_cfg.data:
        raise ValueError(f"{run_dir} is not an LM run: steering generates with the run's language model")
    prompts = held_out_prompts(cfg, run_cfg)
    data = lm_data(run_cfg, run_dir, cfg.harvest, cfg.text_from)
    if not is_causal(data.lm.config):
        raise ValueError(f"steering needs a causal LM: {data.model_name} does not generate")
    if not data.tokenizer.chat_template:
        raise ValueError(f"the steering prompts go through the chat template, and {data.model_name} has none")
    _, model = trained_model(run_dir)
    if not hasattr(model, "decoder_weight"):
        raise ValueError(f"steering adds a decoder direction: {type(model).__name__} has no decoder")
    latents = model.feature_directions().shape[0]
    fired, peak = torch.zeros(latents), torch.zeros(latents)

    def count(codes: torch.Tensor, start: int) -> None:
        fired.add_((codes > 0).sum(0))
        torch.maximum(peak, codes.max(0).values, out=peak)

    sums, _, _ = reason_sums(cfg, data, model, count)
    tokens = sums.plus_tokens + sums.minus_tokens
    density = fired / tokens
    scores = reason_score(sums, cfg.alpha).float().masked_fill(density == 0, -math.inf)  # a dead latent steers nothing
    if int((density > 0).sum()) < 2 * cfg.k:
        raise ValueError(f"k={cfg.k}: the run has {int((density > 0).sum())} latents that fire on {cfg.split}, "
                         f"fewer than the 2k the two groups need")
    top = scores.argsort(descending=True)[:cfg.k].tolist()
    groups = {GROUPS[0]: top, GROUPS[1]: matched_random(density, top, cfg.density_factor, cfg.seed)}
    rows_dir, kind = directions(model)
    strengths = sorted({0.0} | {float(s) for s in cfg.strengths})  # 0: the unsteered baseline, always shown
    pattern = word_pattern(cfg.reasoning_words)
    end_ids = end_of_turn_ids(data.tokenizer, data.lm)
    chat_rows = chat_prompt_ids(data.tokenizer, [p.text for p in prompts])
    jobs = [(group, latent, s) for group, latents_ in groups.items() for latent in latents_ for s in strengths if s > 0]
    rows = []

    def record(group, latent, strength, generated):
        for prompt, answer in zip(prompts, generated):
            rows.append({"group": group, "latent": latent, "strength": strength,
                         **answer_row(prompt, answer, end_ids, data.tokenizer, pattern)})
        print(f"steering: {len(rows) // len(prompts)}/{len(jobs) + 1} settings done ({time.time() - started:.0f} s): "
              f"{group}, latent {latent}, strength {strength:g}", flush=True)

    record("unsteered", None, 0.0, answers(data, chat_rows, end_ids, cfg))
    for group, latent, strength in jobs:
        push = steer(rows_dir[latent], strength * float(peak[latent]), "add")
        record(group, latent, strength, answers(data, chat_rows, end_ids, cfg, push))
    summary = summarise(rows, groups, strengths)
    out = Path(cfg.out) if cfg.out else run_dir / "steering_effect"
    title = (f"{run_dir.name}: {data.model_name} layer {data.layer}, {len(prompts)} held-out problems (set {cfg.prompt_set}), "
             f"greedy, {cfg.max_new_tokens} tokens at most")
    for path in save_figure(figure(summary, strengths, title), out / "steering"):
        print(f"wrote {path}")
    markdown = "\n".join([
        "# Steering with ReasonScore latents against density-matched random latents", "",
        f"{title}. Each latent's {kind} added at every position, c = strength x its largest {cfg.split} activation; "
        f"strength 0 is the unsteered model. ReasonScore on {cfg.split} ({tokens} tokens"
        f"{f' of run {Path(cfg.text_from).name}' if cfg.text_from else ''}), window {list(cfg.reason_window)}, "
        f"fold_decoder_norm={cfg.fold_decoder_norm}. Random latents: "
        f"each within {cfg.density_factor:g}x the density of one top latent (seed {cfg.seed}). Mean over the "
        f"group's latents and the prompts ± the standard error over prompts.", "",
        table(summary, groups, density, strengths), "",
        "A difference between the groups that the standard errors do not cover is what the reasoning latents do "
        "beyond moving the residual stream by as much along any latent of their density.",
        "", f"{stamp_line()} {runs_line([run_dir])}", ""])
    write_whole(out / "steering.md", markdown)
    write_whole(out / "steering.json", json.dumps(stamp() | {"groups": groups, "strengths": strengths,
                                                             "summary": summary, "answers": rows}, indent=1))
    print(markdown)
    print(f"wrote {out / 'steering.md'} and steering.json in {time.time() - started:.0f} s")
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="steering_effect")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "run"):
        sys.exit("error: which run? python -m analysis.steering_effect run=<run folder>")
    try:
        measure(cfg)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {first_line(error)}")


if __name__ == "__main__":
    main()
