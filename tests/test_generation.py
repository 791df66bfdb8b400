"""A corpus the model writes: prompt sets, batched decoding against model.generate (float64, a tiny random
Llama), the corpus file's key and resume after a kill, and data.corpus=generated:<set> through train.py with a
tiny Llama that carries SmolLM2's tokenizer and chat template, and steering measured on the SAE it trains."""
import json
import re

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from activations import generated_corpus, prompt_sets
from activations.decoding import decode, left_padded, next_tokens
from activations.language_model import load_tokenizer
from analysis.steering_effect import matched_random, summarise, word_pattern
from conftest import read_metrics, run_cli

ROWS = [[5, 9, 13], [7, 2, 2, 8, 30, 11], [40, 41], [3, 3, 3, 3, 3]]


def tiny_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config(64)).double().eval()


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory) -> str:
    """A tiny random Llama saved with SmolLM2-Instruct's tokenizer (and so its chat template)."""
    path = tmp_path_factory.mktemp("chat-llama")
    tokenizer = load_tokenizer("smollm2")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_greedy_decoding_gives_model_generate_tokens_while_rows_leave_the_batch(tiny_llama):
    input_ids, mask = left_padded(ROWS, pad_id=0)
    reference = tiny_llama.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                    pad_token_id=0, eos_token_id=[63])[:, input_ids.shape[1]:].tolist()
    end = reference[1][3]  # row 1 ends at its 4th token, whichever rows write it earlier or never
    answers = decode(tiny_llama, input_ids, mask, 12, {end})
    free = tiny_llama.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                               pad_token_id=0, eos_token_id=[end])[:, input_ids.shape[1]:].tolist()
    expected = [row[:row.index(end) + 1] if end in row else row for row in free]
    assert answers == expected
    lengths = sorted(map(len, answers))
    assert lengths[0] < 12 and lengths[-1] == 12  # some rows left the batch early, others wrote to the end


def test_sampling_follows_each_rows_seed_whatever_its_batch(tiny_llama):
    input_ids, mask = left_padded(ROWS, pad_id=0)
    together = decode(tiny_llama, input_ids, mask, 10, {63}, temperature=0.8, top_p=0.9, seeds=[5, 6, 7, 8])
    for row, seed, answer in zip(ROWS, [5, 6, 7, 8], together):
        alone = decode(tiny_llama, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long), 10, {63},
                       temperature=0.8, top_p=0.9, seeds=[seed])
        assert alone == [answer]
    other = decode(tiny_llama, input_ids, mask, 10, {63}, temperature=0.8, top_p=0.9, seeds=[9, 10, 11, 12])
    assert other != together


def test_top_p_keeps_the_smallest_set_of_tokens_that_reaches_it():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    generator = torch.Generator().manual_seed(0)

    def drawn(top_p: float) -> set[int]:
        return {int(next_tokens(logits, 1.0, top_p, [generator])[0]) for _ in range(400)}

    assert drawn(0.5) == {0}  # token 0 alone reaches 0.5
    assert drawn(0.7) == {0, 1}
    assert drawn(1.0) == {0, 1, 2, 3}


def test_prompt_sets_are_seeded_and_their_answers_are_right():
    prompts = prompt_sets.build("reasoning", 60, seed=3)
    assert prompts == prompt_sets.build("reasoning", 60, seed=3) != prompt_sets.build("reasoning", 60, seed=4)
    assert {p.kind for p in prompts} == {"arithmetic", "comparison", "logic", "word_problem", "open"}
    assert sum(p.kind == "open" for p in prompts) == 12 and all(p.answer is None for p in prompts if p.kind == "open")
    for p in prompts:
        numbers = [int(n) for n in re.findall(r"\d+", p.text)]
        if p.kind == "arithmetic":
            a, b, c, d = numbers[:4] if "Compute" in p.text or "Start" in p.text else \
                (numbers[0], numbers[2], numbers[1], numbers[4])
            assert int(p.answer) == (a + b) * c - d
        elif p.kind == "comparison":
            a, b, c, d = numbers
            assert p.answer == ("yes" if a * b > c + d else "no")
        elif p.kind == "logic":  # the answer is never on the lesser side of a comparison
            assert p.answer not in re.findall(r"than (\w+)", p.text) and f"{p.answer} is" in p.text
        elif p.kind == "word_problem" and "buys" in p.text:
            a, b, c, d = numbers
            assert int(p.answer) == a + b * c - d
        elif p.kind == "word_problem":
            total, friends, kept = numbers
            assert int(p.answer) * friends + kept == total
    held_out = prompt_sets.build("problems", 20, seed=3, exclude={p.text for p in prompts})
    assert not {p.text for p in held_out} & {p.text for p in prompts}


def test_final_answers_are_read_from_the_end_of_a_response():
    arithmetic = prompt_sets.Prompt("Compute (1 + 2) * 3 - 4.", "arithmetic", "5")
    assert prompt_sets.is_correct("First 1 + 2 = 3, then 3 * 3 = 9, and 9 - 4 = 5.\nThe answer is 5.", arithmetic)
    assert not prompt_sets.is_correct("The answer is 5, or rather 1,005.", arithmetic)
    comparison = prompt_sets.Prompt("Is 3 * 4 larger than 5 + 6?", "comparison", "yes")
    assert prompt_sets.is_correct("No wait: 12 > 11, so yes.", comparison)
    assert not prompt_sets.is_correct("12 > 11. Yes? No.", comparison)
    logic = prompt_sets.Prompt("Ben is taller than Alice. Alice is taller than Omar. Who is the tallest?", "logic", "Ben")
    assert prompt_sets.is_correct("Alice is taller than Omar, and Ben than Alice: Ben.", logic)
    assert not prompt_sets.is_correct("Ben is taller than Alice, so Alice.", logic)


def test_a_killed_corpus_resumes_after_its_last_whole_batch(chat_llama, tmp_path):
    decoding = generated_corpus.Decoding(prompts=5, max_new_tokens=6, batch_size=1, cache_dir=str(tmp_path))
    path = generated_corpus.corpus_path("generated:reasoning", chat_llama, decoding, progress=False)
    assert path.parent == tmp_path and path.name.startswith("reasoning-")
    whole = path.read_text()
    rows = [json.loads(line) for line in whole.splitlines()]
    assert [row["index"] for row in rows] == list(range(5)) and all(0 < row["new_tokens"] <= 6 for row in rows)
    assert rows[0]["text"].count("<|im_start|>") == 3 and rows[0]["prompt"] in rows[0]["text"]
    lines = whole.splitlines(keepends=True)
    path.unlink()  # killed while writing the third answer: two whole lines and half of one
    generated_corpus.in_progress_path(path).write_text("".join(lines[:2]) + lines[2][:40])
    assert generated_corpus.corpus_path("generated:reasoning", chat_llama, decoding, progress=False) == path
    assert path.read_text() == whole and not generated_corpus.in_progress_path(path).exists()
    stamp = path.stat().st_mtime_ns  # a finished corpus is read, not written again
    generated_corpus.corpus_path("generated:reasoning", chat_llama, decoding, progress=False)
    assert path.stat().st_mtime_ns == stamp
    other = generated_corpus.Decoding(prompts=5, max_new_tokens=6, batch_size=1, cache_dir=str(tmp_path), seed=1)
    assert generated_corpus.file_name("generated:reasoning", chat_llama, other) != path.name


@pytest.fixture(scope="module")
def generated_run(chat_llama, tmp_path_factory):
    """An SAE trained on a corpus the tiny chat Llama wrote, through train.py."""
    root = tmp_path_factory.mktemp("generated_run")
    run_cli("train.py", "experiment=lm_sae", f"data.model={chat_llama}", "data.layer=1", "data.corpus=generated:reasoning",
            "data.generation.prompts=24", "data.generation.max_new_tokens=24", f"data.generation.cache_dir={root}",
            f"data.cache_dir={root / 'cache'}", "data.max_tokens={train:null,val:null,test:null}",
            "model.hidden_dim=32", "data.batch_size=128", "trainer.max_epochs=1", "logger=csv", "data.progress=false",
            "callbacks.unit_metrics.figures=false", "callbacks.downstream_fidelity.max_sequences=4",
            f"hydra.run.dir={root / 'run'}")
    return root


def test_train_on_a_generated_corpus(generated_run):
    assert read_metrics(generated_run / "run")["status"] == "finished"
    corpus = next(generated_run.glob("reasoning-*.jsonl"))
    assert len(corpus.read_text().splitlines()) == 24
    key = json.loads(next((generated_run / "cache").glob("*/manifest.json")).read_text())["key"]
    assert key["corpus"] == corpus.name


def test_steering_effect_scores_both_groups_on_held_out_problems(generated_run):
    run = generated_run / "run"
    result = run_cli("-m", "analysis.steering_effect", f"run={run}", "k=1", "strengths=[2]", "prompts=3",
                     "max_new_tokens=4", "batch_size=2")
    answers = json.loads((run / "steering_effect" / "steering.json").read_text())
    assert len(answers["answers"]) == 3 * (1 + 2)  # unsteered once, then each group's latent at strength 2
    corpus = {json.loads(line)["prompt"] for line in next(generated_run.glob("reasoning-*.jsonl")).open()}
    assert not {row["prompt"] for row in answers["answers"]} & corpus
    top, random = answers["groups"].values()
    assert len(top) == len(random) == 1 and top != random
    assert (run / "steering_effect" / "steering.png").stat().st_size > 0
    assert "| ReasonScore top-k |" in (run / "steering_effect" / "steering.md").read_text()
    assert "steering: 3/3 settings done" in result.stdout


@pytest.mark.parametrize("override, message", [
    ("k=0", "must be >= 1"), ("strengths=[nan]", "must be a list of finite numbers >= 0"),
    ("prompt_set=open", "needs a set of checkable problems"), ("prompt_seed=0", "is the seed of the run's generated"),
])
def test_bad_steering_effect_settings_are_one_error_line(generated_run, override, message):
    result = run_cli("-m", "analysis.steering_effect", f"run={generated_run / 'run'}", override, check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr


def test_random_latents_match_the_density_of_the_top_ones():
    density = torch.tensor([0.1, 0.11, 0.5, 0.0, 0.09, 0.45, 0.001, 0.2], dtype=torch.float64)
    for seed in range(20):
        chosen = matched_random(density, [0, 2], factor=1.5, seed=seed)
        assert chosen[0] in (1, 4) and chosen[1] == 5  # within 1.5x, firing, not a top latent
    assert matched_random(density, [6], factor=1.5, seed=0) == [4]  # none within 1.5x: the nearest in log density


def test_the_spread_is_the_standard_error_over_prompts():
    rows = [{"group": group, "strength": 1.0, "prompt": prompt, "reasoning_words_per_100": value, "length": 1,
             "correct": 0.0}
            for group, prompt, value in [("ReasonScore top-k", "a", 1.0), ("ReasonScore top-k", "a", 3.0),
                                         ("ReasonScore top-k", "b", 6.0), ("random, matched density", "a", 0.0),
                                         ("random, matched density", "b", 0.0)]]
    rows += [{"group": "unsteered", "strength": 0.0, "prompt": p, "reasoning_words_per_100": v, "length": 1,
              "correct": 1.0} for p, v in (("a", 2.0), ("b", 4.0))]
    summary = summarise(rows, {}, [0.0, 1.0])
    top = summary["ReasonScore top-k|1|reasoning_words_per_100"]
    assert top["mean"] == pytest.approx(4.0) and top["se"] == pytest.approx(2.0)  # prompts: 2 and 6
    assert summary["random, matched density|0|reasoning_words_per_100"] == \
        summary["ReasonScore top-k|0|reasoning_words_per_100"] == pytest.approx({"mean": 3.0, "se": 1.0})
    assert word_pattern(["Wait", " wait", "let me"]).findall("Wait, let me see... wait. Await letme") == \
        ["Wait", "let me", "wait"]


@pytest.mark.parametrize("overrides, message", [
    (["data.corpus=generated:"], "data.corpus=generated: names no prompt set: use generated:<set>"),
    (["data.corpus=generated:poems"], "prompt set 'poems' is unknown; choose from ['open', 'problems', 'reasoning']"),
    (["data.corpus=generated:reasoning", "data.generation.max_new_tokens=0"],
     "data.generation.max_new_tokens must be >= 1"),
    (["data.corpus=generated:reasoning", "data.model=minilm"], "needs a causal LM to write it: minilm does not generate"),
    (["data.corpus=[]"], "data.corpus is an empty list"),
])
def test_bad_generated_corpus_settings_are_one_error_line(overrides, message, tmp_path):
    result = run_cli("train.py", "experiment=lm_sae", "data.model=smollm2", *overrides, f"hydra.run.dir={tmp_path}",
                     check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_a_tokenizer_without_a_chat_template_is_refused(chat_llama, tmp_path):
    plain = tmp_path / "plain"
    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    LlamaForCausalLM.from_pretrained(chat_llama).save_pretrained(plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="lays prompts out with the chat template, and .* has none"):
        generated_corpus.chat_tokenizer(str(plain))
