"""A browser of what each latent of an LM run responds to: its firing density, a histogram of its
activations, its top-activating contexts from the harvested tokens (the firing token outlined, its
neighbours shaded by their activation), its ReasonScore, and for a causal LM its logit effect (the latent's
direction through the model's final norm and unembedding: the tokens it promotes and suppresses most).

    python -m analysis.features run=<run dir> [split=test] [top=20] [features=<count or [list]>] [window=8]

Writes into ``<run>/features/``: ``index.html`` (a self-contained page: an index of latents that sorts by
density or ReasonScore and finds a latent by number, and the cards of the first ``cards_per_page`` latents;
the next ones on ``block-1.html``, ``block-2.html``, ..., a click away), ``features.json`` (the same data for
programs) and ``reason_score.md`` (the latents above the ReasonScore quantile). It reads the run's activation cache
(``harvest=true`` harvests it again where it is missing), streaming: memory grows with the latents times
``top``, not with the tokens. A count in ``features`` keeps the latents with the highest ReasonScore.
"""
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from activations.cache import ActivationCache
from activations.language_model import is_causal
from analysis.features_page import render_pages
from analysis.runs import against_pca, left_out_note
from analysis.stamp import stamp_line
from analysis.trained import run_config, trained_model
from runtime.errors import first_line
from evaluation.features import Histograms, TopActivations, activations_at, stream_codes
from evaluation.reason_score import ReasonSums, above_quantile, decoder_norms, reason_score, windows, word_groups
from runtime.files import write_whole

LOGIT_ROWS = 10  # promoted and suppressed tokens shown per latent, as SAE-Dashboard shows them


# what makes a run's text (the rest of its data config makes the activations from it)
TEXT_KEYS = ("corpus", "generation", "text_field", "max_tokens", "split_fractions", "split_seed")


def lm_data(run_cfg: DictConfig, run_dir: Path, harvest: bool, text_from: str | None = None):
    """The run's activation datamodule, with its cache (checked before anything is harvested) and its LM; with
    ``text_from``, the text of that other LM run (its corpus and splits) read through this run's model and site."""
    data_cfg = run_cfg.data
    if "layer" not in data_cfg or "model" not in data_cfg:
        raise ValueError(f"{run_dir} is not an LM run (its data is {data_cfg.get('_target_')}): the feature browser "
                         f"reads an LM run's activation cache and tokens")
    if text_from:
        other = run_config(Path(text_from)).data
        same = ("model", "layer", "site", "input_dim")
        if any(other.get(key) != data_cfg.get(key) for key in same):
            raise ValueError(f"text_from={text_from} reads {[other.get(key) for key in same]} (model, layer, site, "
                             f"width), but {run_dir} was trained on {[data_cfg.get(key) for key in same]}")
        data_cfg = OmegaConf.merge(data_cfg, {key: other[key] for key in TEXT_KEYS if key in other})
    if not data_cfg.get("cache", True):
        raise ValueError(f"{run_dir} trained without an activation cache (data.cache=false): the browser reads one")
    data = instantiate(OmegaConf.merge(data_cfg, {"progress": False}))
    cache = ActivationCache(data.cache_dir, data.cache_key())
    manifest = cache.manifest()
    if not harvest and not (manifest and all(state["complete"] for state in manifest["splits"].values())):
        raise FileNotFoundError(f"no activation cache for {run_dir} at {cache.dir} (deleted, or the run was trained "
                                f"from another folder, data.cache_dir={data.cache_dir}): add harvest=true to harvest "
                                f"it again from the run's data config, or run from the folder the run was trained in")
    data.setup("fit")
    data.load_lm()
    return data


def token_grid(data, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The split's token rows [n, L], their padding mask, and for each row and column the harvested position
    it is (-1: none); checked against the token ids the cache holds."""
    sequences = data.sequences[split]
    index = torch.full(sequences.input_ids.shape, -1, dtype=torch.long)
    index[sequences.keep] = torch.arange(int(sequences.keep.sum()))
    if not torch.equal(sequences.input_ids[sequences.keep], data.splits[split][1]):
        raise ValueError(f"the {split} tokens of the corpus differ from the activation cache's: the corpus changed "
                         f"since the harvest; harvest again (delete the cache and add harvest=true)")
    return sequences.input_ids, sequences.attention_mask.bool(), index


def selected(features, scores: torch.Tensor) -> list[int]:
    latents = len(scores)
    if features is None:
        return list(range(latents))
    if isinstance(features, int):
        if features <= 0:
            raise ValueError(f"features={features}: a count must be > 0")
        return scores.topk(min(features, latents)).indices.tolist()
    chosen = [int(i) for i in features]
    bad = [i for i in chosen if not 0 <= i < latents]
    if bad:
        raise ValueError(f"features={bad} out of range: the run's model has {latents} latents (0..{latents - 1})")
    return chosen


def directions(model) -> tuple[torch.Tensor, str]:
    """One row per latent in the LM's residual units: an SAE's decoder columns, or a decoder-free encoder's rows
    (it has no decoder: its read directions stand in)."""
    if hasattr(model, "decoder_weight"):
        return (model.decoder_weight().T / model.input_scale).detach(), "decoder direction"
    return model.feature_directions().detach(), "encoder row (the model has no decoder)"


@torch.no_grad()
def logit_effects(lm, rows: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                      torch.Tensor]:
    """(promoted ids, their logits, suppressed ids, their logits) [n, LOGIT_ROWS] of directions through the
    final norm (RMSNorm or LayerNorm: a direction's scale does not matter) and the unembedding."""
    final_norm = getattr(lm.base_model, "norm", None) or getattr(lm.base_model, "ln_f", None)
    unembed = lm.get_output_embeddings()
    results = [[], [], [], []]
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk].to(unembed.weight.dtype)
        logits = unembed(final_norm(block) if final_norm is not None else block).float()
        top, bottom = logits.topk(LOGIT_ROWS, dim=1), (-logits).topk(LOGIT_ROWS, dim=1)
        for store, value in zip(results, (top.indices, top.values, bottom.indices, -bottom.values)):
            store.append(value)
    return tuple(torch.cat(parts) for parts in results)


def token_text(tokenizer, token: int) -> str:
    """A token as it reads in running text: WordPiece's continuations (##) join the previous token and its
    word starts get their space; byte-level BPE's pieces carry their own."""
    from tokenizers.decoders import WordPiece

    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's: its decoder says how pieces join
    if backend is not None and isinstance(backend.decoder, WordPiece):
        piece = tokenizer.convert_ids_to_tokens(token)
        return piece[2:] if piece.startswith("##") else " " + piece
    return tokenizer.decode([token])


def significant(value: float) -> float:
    return float(f"{value:.3g}")


def browse(cfg: DictConfig) -> Path:
    started = time.time()
    run_dir = Path(cfg.run)
    run_cfg = run_config(run_dir)
    if cfg.top <= 0 or cfg.window < 0 or cfg.cards_per_page <= 0:
        raise ValueError(f"top={cfg.top} and cards_per_page={cfg.cards_per_page} must be > 0 "
                         f"and window={cfg.window} >= 0")
    before, after = check_reason_settings(cfg)
    data = lm_data(run_cfg, run_dir, cfg.harvest, cfg.text_from)
    _, model = trained_model(run_dir)
    input_ids, real, grid = token_grid(data, cfg.split)
    x = data.splits[cfg.split][0]
    latents = model.feature_directions().shape[0]
    tops = TopActivations(latents, cfg.top)
    sums, groups, fold = reason_sums(cfg, data, model, tops.update)
    values, positions = tops.kept()
    histograms = Histograms(values[:, 0])
    for _, codes in stream_codes(model, x, cfg.chunk_size):
        histograms.update(codes)
    scores = reason_score(sums, cfg.alpha)
    reasoning = above_quantile(scores, cfg.quantile) if cfg.quantile is not None else None
    chosen = selected(cfg.features, scores)

    # each chosen latent's contexts: the row and column of its top positions, window tokens either side
    rows_of, cols_of = torch.nonzero(grid >= 0, as_tuple=True)
    offsets = torch.arange(-cfg.window, cfg.window + 1)
    tops_chosen = positions[chosen]  # [n, top]
    used = tops_chosen >= 0
    row = torch.where(used, rows_of[tops_chosen.clamp_min(0)], 0)
    col = torch.where(used, cols_of[tops_chosen.clamp_min(0)], 0)[:, :, None] + offsets  # [n, top, w]
    rows3, cols3 = row[:, :, None].expand_as(col), col.clamp(0, grid.shape[1] - 1)
    inside = used[:, :, None] & (col >= 0) & (col < grid.shape[1]) & real[rows3, cols3]  # no padding
    context_ids = torch.where(inside, input_ids[rows3, cols3], -1)
    context_positions = torch.where(inside, grid[rows3, cols3], -1)
    wanted = torch.full((latents, *context_positions.shape[1:]), -1, dtype=torch.long)
    wanted[chosen] = context_positions
    context_acts = activations_at(model, x, wanted, cfg.chunk_size)[chosen]

    rows, direction_kind = directions(model)
    causal = is_causal(data.lm.config)
    effects = logit_effects(data.lm, rows[chosen]) if causal else None
    logit_note = (f"the latent's {direction_kind} through {data.model_name}'s final norm and unembedding" if causal
                  else f"not applicable: {data.model_name} is not a causal LM (it has no unembedding)")

    vocab_ids = set(context_ids[context_ids >= 0].tolist())
    if effects is not None:
        vocab_ids |= set(effects[0].flatten().tolist()) | set(effects[2].flatten().tolist())
    vocab = {str(i): token_text(data.tokenizer, i) for i in sorted(vocab_ids)}
    cards = []
    for n, i in enumerate(chosen):
        contexts = [{"position": int(positions[i, k]),
                     "focus": int((context_ids[n, k, :cfg.window] >= 0).sum()),  # the firing token's place
                     "tokens": [int(t) for t in context_ids[n, k] if t >= 0],
                     "acts": [significant(a) for a, t in zip(context_acts[n, k].tolist(), context_ids[n, k]) if t >= 0]}
                    for k in range(cfg.top) if positions[i, k] >= 0]
        card = {"index": i, "density": significant(float(tops.fired[i]) / max(tops.tokens, 1)),
                "max": significant(float(values[i, 0])), "reason_score": float(scores[i]),
                "histogram": {"edges": [significant(e) for e in histograms.edges[i].tolist()],
                              "counts": histograms.counts[i].tolist()},
                "contexts": contexts}
        if effects is not None:
            card["promoted"] = [[int(t), significant(v)] for t, v in zip(effects[0][n], effects[1][n].tolist())]
            card["suppressed"] = [[int(t), significant(v)] for t, v in zip(effects[2][n], effects[3][n].tolist())]
        cards.append(card)

    out = Path(cfg.out) if cfg.out else run_dir / "features"
    out.mkdir(parents=True, exist_ok=True)
    page = {"run": run_dir.name, "text_of": Path(cfg.text_from).name if cfg.text_from else None,
            "model": data.model_name, "layer": data.layer, "split": cfg.split,
            "tokens": tops.tokens, "latents": latents, "top": cfg.top, "window": cfg.window,
            "logit_effect": logit_note, "stamp": stamp_line(), "fidelity": fidelity_line(run_dir),
            "reason_score": {"words": {name: [data.tokenizer.decode(ids) for ids in variants]
                                       for name, variants in groups.items()},
                             "alpha": cfg.alpha, "window": f"{before} before, {after} after each matched token",
                             "fold": fold_note(model, fold), "quantile": cfg.quantile, "above_quantile": reasoning},
            "vocab": vocab, "features": cards}
    write_whole(out / "features.json", json.dumps(page, separators=(",", ":")))
    for stale in out.glob("block-*.html"):  # a page of an earlier, larger browser
        stale.unlink()
    pages = render_pages(page, cfg.cards_per_page)
    for name, text in pages.items():
        write_whole(out / name, text)
    write_whole(out / "reason_score.md", reason_table(page))
    seconds = time.time() - started
    more = f" (and {len(pages) - 1} more pages of cards, block-<b>.html)" if len(pages) > 1 else ""
    print(f"wrote {out / 'index.html'}{more}, features.json and reason_score.md: {len(chosen)} of {latents} latents "
          f"over {tops.tokens} {cfg.split} tokens in {seconds:.0f} s")
    log_to_wandb(run_cfg, run_dir, out / "index.html")
    return out


def check_reason_settings(cfg: DictConfig) -> tuple[int, int]:
    """One line for a bad ReasonScore setting, before any work; the window's (before, after)."""
    if cfg.split not in ("val", "test"):
        raise ValueError(f"split={cfg.split}: ReasonScore reads a split the cache holds whole, val or test")
    if not list(cfg.reasoning_words or []):
        raise ValueError("reasoning_words is empty: ReasonScore needs at least one word")
    if cfg.quantile is not None and not 0 <= cfg.quantile < 1:
        raise ValueError(f"quantile={cfg.quantile} must be in [0, 1) (the paper keeps latents above 0.997), or null")
    return reason_window(cfg.reason_window)


def reason_sums(cfg: DictConfig, data, model, each: Callable[[torch.Tensor, int], None]):
    """ReasonScore's sums over the split's codes (folded by the decoder norms where ``fold_decoder_norm``), with
    ``each(codes, start)`` called on every chunk; the sums, the word groups and the fold."""
    before, after = reason_window(cfg.reason_window)
    input_ids, _, grid = token_grid(data, cfg.split)
    groups = word_groups(list(cfg.reasoning_words), data.tokenizer)
    in_groups = windows(input_ids, groups, before, after).permute(1, 2, 0)[grid >= 0]  # [positions, R], in order
    fold = decoder_norms(model) if cfg.fold_decoder_norm else None
    sums = ReasonSums.zeros(model.feature_directions().shape[0], len(groups))
    for start, codes in stream_codes(model, data.splits[cfg.split][0], cfg.chunk_size):
        each(codes, start)
        sums.update(codes if fold is None else codes.double() * fold, in_groups[start:start + len(codes)])
    return sums, groups, fold


def reason_window(window) -> tuple[int, int]:
    """``reason_window=[before, after]``: ReasonScore's window around each matched token."""
    if window is None or len(window) != 2 or any(not isinstance(n, int) or n < 0 for n in window):
        raise ValueError(f"reason_window={window} must be [before, after], two ints >= 0 (the authors' code: [1,2])")
    return int(window[0]), int(window[1])


def fold_note(model, fold) -> str:
    if fold is not None:
        return "activations times their decoder row's norm (the authors' fold_W_dec_norm)"
    if not hasattr(model, "decoder_weight"):
        return "none: the decoder-free encoder has no decoder to fold"
    return "none (fold_decoder_norm=false): raw activations"


def fidelity_line(run_dir: Path) -> str:
    """What the SAE's code is worth beside the PCA of the same L0, from the run's metrics.json."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if "pca_fvu_at_l0" not in metrics:
        return "no PCA baseline in this run's metrics (trained before it was measured)"
    return (f"test L0 {metrics['l0_test']:.1f}; explained variance {metrics['explained_variance']:.3f} "
            f"(PCA with {metrics['pca_k_at_l0']:.0f} components: {metrics['pca_explained_variance_at_l0']:.3f}); "
            f"downstream recovered {metrics['downstream_recovered']:.3f} ± {metrics['downstream_recovered_se']:.3f} "
            f"(PCA: {metrics['pca_downstream_recovered_at_l0']:.3f}); beats its PCA: {against_pca(metrics)}; "
            f"{left_out_note(metrics)}")


def reason_table(page: dict, rows: int = 20) -> str:
    """The latents above the ReasonScore quantile (the paper's selection), or without one the ``rows`` highest,
    each with its density and the token it fires most on."""
    score = page["reason_score"]
    by_index = {card["index"]: card for card in page["features"]}
    if score["above_quantile"] is not None:
        wanted = score["above_quantile"]
        which = f"the {len(wanted)} latents above the {score['quantile']:g} quantile of ReasonScore (the paper's selection)"
    else:
        wanted = [card["index"] for card in sorted(page["features"], key=lambda card: -card["reason_score"])[:rows]]
        which = f"the {len(wanted)} highest ReasonScores on the page"
    cards = [by_index[i] for i in wanted if i in by_index]
    if len(cards) < len(wanted):
        which += f"; {len(wanted) - len(cards)} of them are not among the latents features= chose, left out below"
    text = f" of run {page['text_of']}'s text" if page.get("text_of") else ""
    lines = [f"# ReasonScore: the top latents of {page['run']}", "",
             f"{page['model']} layer {page['layer']}, {page['tokens']} {page['split']} tokens{text}; ReasonScore as "
             f"docs/features.md defines it (alpha {score['alpha']}, window {score['window']}, fold: {score['fold']}); "
             f"{which}. A dense latent (density near 1) fires everywhere, reasoning words included: read its "
             f"ReasonScore beside its density.", "",
             f"The SAE: {page['fidelity']}.", "",
             "| latent | ReasonScore | density | max activation | its top token |", "|---|---|---|---|---|"]
    for card in cards:
        first = card["contexts"][0] if card["contexts"] else None
        shown = page["vocab"][str(first["tokens"][first["focus"]])] if first else "–"
        shown = shown.replace("|", "\\|").replace("\n", "\\n")
        lines.append(f"| {card['index']} | {card['reason_score']:.3g} | {card['density']:.3g} | {card['max']:.3g} | "
                     f"`{shown}` |")
    return "\n".join(lines) + f"\n\n{page['stamp']}\n"


def log_to_wandb(run_cfg: DictConfig, run_dir: Path, page: Path) -> None:
    """The page into the run's own W&B run, where the run logged to W&B."""
    logger = run_cfg.get("logger") or {}
    if not str(logger.get("_target_", "")).endswith("WandbLogger"):
        return
    os.environ.setdefault("WANDB_SILENT", "true")  # as train.py: the line below says where it went
    import wandb

    wandb.setup()
    with wandb.init(project=logger.get("project"), id=logger.get("id"), dir=logger.get("save_dir", str(run_dir)),
                    resume="allow", mode="offline" if logger.get("offline", False) else None) as run:
        run.log({"features/browser": wandb.Html(page.read_text(), inject=False)})
    print(f"logged to the run's W&B run {logger.get('id')}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="features")
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "run"):
        sys.exit("error: which run? python -m analysis.features run=<run folder>")
    try:
        browse(cfg)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {first_line(error)}")


if __name__ == "__main__":
    main()
