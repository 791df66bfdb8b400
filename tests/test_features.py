"""The feature browser, ReasonScore and steering: the math in float64 against direct computations, steering on
a small random causal Llama, and the commands through Hydra on a MiniLM run, the page opened in Chromium."""
import json
import math
import os
import re
import shutil
import subprocess

import pytest
import torch
from conftest import QUICK, run_cli

from evaluation.features import Histograms, TopActivations, activations_at
from evaluation.reason_score import ReasonSums, above_quantile, decoder_norms, reason_score, windows, word_groups
from evaluation.steering import generate, next_token_logits, steer
from lightning_modules.encoder import DecoderFreeEncoder
from lightning_modules.losses import CompositeLoss
from lightning_modules.sae import SparseAutoencoder

LM_RUN = ["experiment=lm_sae", "data.max_tokens={train:3000,val:600,test:600}", "model.hidden_dim=64",
          "data.batch_size=256", "data.eval_batch_size=512", "trainer.max_epochs=2", "model.lr=1e-3", "logger=csv",
          "data.progress=false", "callbacks.unit_metrics.figures=false", "callbacks.downstream_fidelity.max_sequences=4"]


class WordTokenizer:
    """Words to ids: "let me" is two tokens, as in a real tokenizer."""
    ids = {"wait": [7], "Wait": [8], "let me": [3, 4], "hmm": [9]}

    def encode(self, text, add_special_tokens=False):
        return self.ids.get(text, [])


def test_reason_score_equals_the_formula_computed_by_hand_in_float64():
    groups = word_groups(["wait", "Wait", "let me", "hmm", "absent"], WordTokenizer())
    assert list(groups) == ["wait", "let me", "hmm"] and groups["wait"] == [[7], [8]]
    tokens = torch.tensor([[1, 7, 2, 2, 2, 3, 4, 2, 2, 2, 2, 2],
                           [2, 2, 2, 8, 2, 2, 2, 2, 9, 2, 2, 2]])
    masks = windows(tokens, groups)  # [R, n, L]
    expected = torch.zeros_like(masks)
    expected[0, 0, 0:4] = expected[0, 1, 2:6] = True  # wait at (0, 1) and Wait at (1, 3): one before, two after
    expected[1, 0, 4:9] = True  # "let me" at (0, 5..6): from one before its first to two after its last
    expected[2, 1, 7:11] = True  # hmm at (1, 8)
    assert torch.equal(masks, expected)

    generator = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(24, 5, generator=generator, dtype=torch.float64))  # 5 latents, 24 tokens
    in_groups = masks.permute(1, 2, 0).reshape(24, 3)
    sums = ReasonSums.zeros(5, 3)
    for start in range(0, 24, 7):  # streamed in chunks
        sums.update(codes[start:start + 7], in_groups[start:start + 7])
    got = reason_score(sums, alpha=0.7)

    plus = in_groups.any(1)
    mu_plus, mu_minus = codes[plus].mean(0), codes[~plus].mean(0)
    for i in range(5):
        mu_r = [codes[in_groups[:, r], i].mean().item() for r in range(3)]
        p = [m / (sum(mu_r) + 1e-12) for m in mu_r]
        entropy = -sum(q * math.log(q) for q in p if q > 0) / math.log(3)
        score = (mu_plus[i] / (mu_plus.sum() + 1e-12) * entropy ** 0.7 - mu_minus[i] / (mu_minus.sum() + 1e-12))
        assert got[i].item() == pytest.approx(score.item(), rel=1e-12, abs=1e-15)


def test_the_papers_wider_window_is_one_argument_away():
    groups = word_groups(["wait", "let me"], WordTokenizer())
    tokens = torch.tensor([[2, 2, 2, 2, 2, 7, 2, 2, 2, 3, 4, 2, 2, 2, 2]])
    narrow, wide = windows(tokens, groups), windows(tokens, groups, before=2, after=3)
    assert torch.nonzero(narrow[0, 0]).squeeze(1).tolist() == [4, 5, 6, 7]  # wait at 5: 1 before, 2 after
    assert torch.nonzero(wide[0, 0]).squeeze(1).tolist() == [3, 4, 5, 6, 7, 8]  # 2 before, 3 after
    assert torch.nonzero(narrow[1, 0]).squeeze(1).tolist() == [8, 9, 10, 11, 12]  # "let me" at 9..10
    assert torch.nonzero(wide[1, 0]).squeeze(1).tolist() == [7, 8, 9, 10, 11, 12, 13]


def scores_of(codes: torch.Tensor, in_groups: torch.Tensor) -> torch.Tensor:
    sums = ReasonSums.zeros(codes.shape[1], in_groups.shape[1])
    sums.update(codes, in_groups)
    return reason_score(sums)


def test_folding_the_decoder_norm_reorders_latents_whose_code_and_decoder_share_a_scale():
    """Latent 0 leads latent 1 on raw codes (shares of D+ 0.50 vs 0.33, of D- 0.22 vs 0.11); latent 1's decoder
    row is three times as long, and activations times decoder norms (the authors' fold_W_dec_norm) rank it first
    (0.60 - 0.27 against 0.30 - 0.18)."""
    in_groups = torch.tensor([[True], [True], [False], [False]])
    codes = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 0.5, 3.0], [1.0, 0.5, 3.0]], dtype=torch.float64)
    sae = SparseAutoencoder(input_dim=4, hidden_dim=3, loss=CompositeLoss({"mse": 1.0}))
    with torch.no_grad():  # free decoder norms, as the decoder-norm-L1 recipe's
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    norms = decoder_norms(sae)
    assert norms.tolist() == pytest.approx([1.0, 3.0, 1.0], rel=1e-7)
    raw, folded = scores_of(codes, in_groups), scores_of(codes * norms, in_groups)
    assert raw.argmax() == 0 and folded.argmax() == 1
    plus = in_groups[:, 0]
    for scores, a in ((raw, codes), (folded, codes * norms)):  # one group: entropy 1, so mu+ share - mu- share
        mu_plus, mu_minus = a[plus].mean(0), a[~plus].mean(0)
        torch.testing.assert_close(scores, mu_plus / (mu_plus.sum() + 1e-12) - mu_minus / (mu_minus.sum() + 1e-12))
    encoder = DecoderFreeEncoder(input_dim=4, hidden_dim=2, loss=CompositeLoss({"lse": 1.0}))
    assert decoder_norms(encoder) is None  # nothing to fold


def test_the_quantile_keeps_the_latents_above_it_highest_first():
    scores = torch.randn(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kept = above_quantile(scores, 0.997)
    ranked = sorted(range(2000), key=lambda i: -scores[i].item())
    cut = sorted(scores.tolist())[int(0.997 * 1999)] * 0.003 + sorted(scores.tolist())[int(0.997 * 1999) + 1] * 0.997
    assert kept == [i for i in ranked if scores[i].item() > cut]  # numpy's linear quantile, by hand
    assert len(kept) == 6


def test_streamed_top_activations_and_histograms_equal_the_direct_ones():
    generator = torch.Generator().manual_seed(1)
    codes = torch.relu(torch.randn(1000, 6, generator=generator)) * (torch.rand(1000, 6, generator=generator) > 0.7)
    tops = TopActivations(6, top=5)
    for start in range(0, 1000, 64):
        tops.update(codes[start:start + 64], start)
    values, positions = tops.kept()
    direct = codes.T.topk(5, dim=1)
    assert torch.equal(values, direct.values) and torch.equal(positions, direct.indices)
    assert torch.equal(tops.fired, (codes > 0).sum(0)) and tops.tokens == 1000
    histograms = Histograms(values[:, 0])
    histograms.update(codes)
    assert torch.equal(histograms.counts.sum(1), ((codes > 1e-4 * values[:, 0]) & (codes > 0)).sum(0))


def test_activations_at_gathers_each_latent_s_own_positions():
    class Identity:  # "codes" of an input are the input itself
        def codes(self, x, chunk_size):
            return x

    x = torch.arange(40.0).view(10, 4)  # position p, latent i -> 4 p + i
    wanted = torch.tensor([[0, 9, -1], [3, 3, 2], [-1, -1, -1], [5, 0, 1]])
    got = activations_at(Identity(), x, wanted, chunk_size=3)
    expected = torch.where(wanted >= 0, 4 * wanted + torch.arange(4)[:, None], 0).float()
    assert torch.equal(got, expected)


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_steering_at_strength_zero_is_the_clean_generation(tiny_llama):
    prompt = torch.tensor([[5, 9, 13, 2]])
    module = {1: "model.layers.1"}
    direction = torch.randn(32)
    clean = generate(tiny_llama, prompt, 12)
    assert torch.equal(generate(tiny_llama, prompt, 12, module, steer(direction, 0.0, "add")), clean)
    assert not torch.equal(generate(tiny_llama, prompt, 12, module, steer(direction, 50.0, "add")), clean)


def test_a_large_step_along_a_direction_predicts_the_next_token_through_norm_and_unembedding(tiny_llama):
    prompt = torch.tensor([[5, 9, 13, 2]])
    module = {1: "model.layers.1"}  # the last block: its output goes through the final norm to the head
    for token in (3, 40):
        direction = tiny_llama.lm_head.weight[token].detach() / tiny_llama.model.norm.weight.detach()
        with torch.no_grad():  # as the step grows, the final norm sees the direction alone
            predicted = tiny_llama.lm_head(tiny_llama.model.norm(direction[None]))[0]
        logits = next_token_logits(tiny_llama, prompt, module, steer(direction, 1e4, "add"))
        clean = next_token_logits(tiny_llama, prompt)
        assert logits.argmax() == predicted.argmax() and not torch.allclose(clean, logits, atol=1e-2)
        torch.testing.assert_close(logits.softmax(-1), predicted.softmax(-1), atol=1e-4, rtol=1e-3)


def test_clamp_sets_the_latent_s_activation(tiny_llama):
    """With the activation read as h . w / |w|^2, clamping to c leaves h with exactly that activation."""
    direction = torch.randn(32, dtype=torch.float64)
    h = torch.randn(3, 5, 32, dtype=torch.float64)

    def activation(rows):
        return rows @ direction / direction.dot(direction)

    moved = steer(direction, 2.5, "clamp", activation)(0, h)
    torch.testing.assert_close(activation(moved.reshape(-1, 32)), torch.full((15,), 2.5, dtype=torch.float64))


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    run_cli("train.py", *LM_RUN, f"data.cache_dir={root / 'cache'}", f"hydra.run.dir={root / 'run'}")
    return root


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_browser_page_opens_in_chromium_with_its_index_and_a_latent_card(lm_run):
    result = run_cli("-m", "analysis.features", f"run={lm_run / 'run'}", "top=5", "window=3")
    out = lm_run / "run" / "features"
    assert "64 of 64 latents over 630 test tokens" in result.stdout  # max_tokens ends with a whole window
    page = json.loads((out / "features.json").read_text())
    assert len(page["features"]) == 64 and page["logit_effect"].startswith("not applicable: minilm is not a causal")
    firing = [card for card in page["features"] if card["contexts"]]
    card = firing[0]
    context = card["contexts"][0]
    assert context["acts"][context["focus"]] == card["max"] and len(context["tokens"]) <= 7
    assert (out / "reason_score.md").read_text().startswith("# ReasonScore: the top latents of")
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI: the README's test command installs it (scripts/browser.sh)")
        pytest.skip("chromium is not installed (bash scripts/browser.sh installs it)")
    def dom(page: str) -> str:
        return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page],
                              capture_output=True, text=True, timeout=120).stdout

    first = dom((out / "index.html").as_uri())
    assert first.count('class="latent"') == 64  # the index, one row per latent
    assert 'id="latent-card"' in first and first.count('class="context"') >= 1  # the first card, with its contexts
    shown_card = first.split('<main id="card">')[1].split("</main>")[0]
    assert "not a causal LM" in shown_card and shown_card.count("Logit effect") == 1  # said, and once
    assert "cards 1-64 of 64 on this page, page 1 of 1" in first and not list(out.glob("block-*.html"))

    run_cli("-m", "analysis.features", f"run={lm_run / 'run'}", "top=5", "window=3", "cards_per_page=16")
    assert sorted(path.name for path in out.glob("*.html")) == ["block-1.html", "block-2.html", "block-3.html",
                                                                 "index.html"]
    later = page["features"][40]  # on the third page: cards 33-48
    third = dom((out / "block-2.html").as_uri() + f"#latent-{later['index']}")
    assert third.count('class="latent"') == 64 and f"Latent {later['index']}</h2>" in third
    assert "cards 33-48 of 64 on this page, page 3 of 4" in third
    sizes = [path.stat().st_size for path in out.glob("*.html")]
    assert max(sizes) < 0.5 * (out / "features.json").stat().st_size  # no page carries every card


@pytest.mark.parametrize("command, message", [
    (["-m", "analysis.features", "features=[64]"], "features=[64] out of range: the run's model has 64 latents"),
    (["-m", "analysis.features", "reasoning_words=[]"], "reasoning_words is empty"),
    (["-m", "analysis.features", "reason_window=[1]"], "reason_window=[1] must be [before, after]"),
    (["-m", "analysis.features", "quantile=1.5"], "quantile=1.5 must be in [0, 1)"),
    (["-m", "analysis.steer", "feature=3", "prompt=x"], "steering needs a causal LM: minilm is a sentence encoder"),
])
def test_bad_feature_input_is_one_error_line(lm_run, command, message):
    result = run_cli(*command, f"run={lm_run / 'run'}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")


def test_a_missing_cache_or_a_run_without_one_is_one_line(lm_run, tmp_path):
    cache = lm_run / "cache"
    moved = tmp_path / "moved"
    shutil.move(cache, moved)
    try:
        result = run_cli("-m", "analysis.features", f"run={lm_run / 'run'}", check=False)
    finally:
        shutil.move(moved, cache)
    assert result.stderr.strip().splitlines()[-1].startswith("error: no activation cache for")
    assert "add harvest=true" in result.stderr
    run_cli("train.py", *QUICK, f"hydra.run.dir={tmp_path / 'mixture'}")
    result = run_cli("-m", "analysis.features", f"run={tmp_path / 'mixture'}", check=False)
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'mixture'} is not an LM run")


def test_text_from_reads_another_runs_text_through_this_runs_sae(lm_run, tmp_path):
    other = tmp_path / "other"
    run_cli("train.py", *LM_RUN, "data.split_seed=1", "data.max_tokens={train:1000,val:300,test:300}",
            "trainer.max_epochs=1", f"data.cache_dir={lm_run / 'cache'}", f"hydra.run.dir={other}")
    own = run_cli("-m", "analysis.features", f"run={other}", "top=3", f"out={tmp_path / 'own'}").stdout
    read = run_cli("-m", "analysis.features", f"run={lm_run / 'run'}", f"text_from={other}", "top=3",
                   f"out={tmp_path / 'read'}").stdout
    tokens = re.search(r"over (\d+) test tokens", own).group(1)
    assert f"over {tokens} test tokens" in read and tokens != "630"  # the other run's test split, not its own
    assert f"{tokens} test tokens of run other's text" in (tmp_path / "read" / "reason_score.md").read_text()

    run_cli("train.py", *QUICK, f"hydra.run.dir={tmp_path / 'mixture'}")
    result = run_cli("-m", "analysis.features", f"run={lm_run / 'run'}", f"text_from={tmp_path / 'mixture'}",
                     check=False)
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: text_from={tmp_path / 'mixture'} reads [None")
