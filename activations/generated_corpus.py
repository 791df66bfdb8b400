"""A corpus the model writes itself (``data.corpus=generated:<prompt set>``): a causal LM with a chat template
(SmolLM2-135M-Instruct) answers a prompt set (activations/prompt_sets.py), and each document is the
conversation as the chat template lays it out (its default system turn, the user's prompt, the answer): the
text the harvest reads, so the SAE sees prompts and answers as the model does in a chat.

Decoding is batched with the KV cache, finished rows leaving the batch (activations/decoding.py); prompts
go in length order, so a batch's left padding stays short. Each row samples from its own generator, seeded
by the seed and the prompt's index: the batch size changes the speed, not the text (up to float rounding of
batched matmuls).

The corpus file is named by a key of everything that makes its text (model weights, tokenizer and chat
template, the prompts, the decoding settings, the seed). Batches are appended to ``.<name>.in-progress`` with
an fsync each, so a killed run resumes after its last whole batch; the file is written whole under its name
when every prompt has its answer. A copy shipped in data/generated with the same key is read instead of generating."""
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from activations import language_model, prompt_sets
from activations.decoding import chat_prompt_ids, decode, end_of_turn_ids, left_padded
from runtime.files import write_whole

log = logging.getLogger(__name__)
PREFIX = "generated:"
SHIPPED = Path(__file__).resolve().parents[1] / "data" / "generated"


@dataclass(frozen=True)
class Decoding:
    """``data.generation``: how many prompts, and how the model answers them."""
    prompts: int = 800
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.9
    seed: int = 0  # of the prompt set and of the sampling
    batch_size: int = 32  # rows decoded together: speed only, not part of the key
    cache_dir: str = "cache/generated"

    def check(self) -> None:
        checks = [(self.prompts >= 1, f"data.generation.prompts must be >= 1, got {self.prompts}"),
                  (self.max_new_tokens >= 1, f"data.generation.max_new_tokens must be >= 1 (the answer's length "
                                             f"in tokens), got {self.max_new_tokens}"),
                  (self.temperature >= 0, f"data.generation.temperature must be >= 0, got {self.temperature}"),
                  (0 < self.top_p <= 1, f"data.generation.top_p must be in (0, 1], got {self.top_p}"),
                  (self.batch_size >= 1, f"data.generation.batch_size must be >= 1, got {self.batch_size}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def sampling(self) -> dict:
        """What of the decoding makes the text (the key's part)."""
        settings = asdict(self)
        for speed_only in ("batch_size", "cache_dir"):
            settings.pop(speed_only)
        return settings


def prompt_set_name(corpus: str) -> str:
    name = corpus[len(PREFIX):]
    if not name:
        raise ValueError(f"data.corpus={corpus} names no prompt set: use generated:<set>, one of "
                         f"{sorted(prompt_sets.SETS)}")
    if name not in prompt_sets.SETS:
        raise ValueError(f"data.corpus={corpus}: prompt set '{name}' is unknown; choose from {sorted(prompt_sets.SETS)}")
    return name


def chat_tokenizer(model: str):
    """The model's tokenizer, refused in one line when it cannot lay out a chat or the model cannot write."""
    if not language_model.is_causal(language_model.load_config(model)):
        raise ValueError(f"data.corpus=generated:... needs a causal LM to write it: {model} does not generate")
    tokenizer = language_model.load_tokenizer(model)
    if not tokenizer.chat_template:
        raise ValueError(f"data.corpus=generated:... lays prompts out with the chat template, and {model}'s "
                         f"tokenizer has none (use an instruction-tuned model such as smollm2)")
    return tokenizer


def corpus_key(model: str, name: str, decoding: Decoding) -> str:
    tokenizer = chat_tokenizer(model)
    prompts = [p.text for p in prompt_sets.build(name, decoding.prompts, decoding.seed)]
    described = {"model": model, "weights": Path(language_model.model_path(model)).name,
                 "tokenizer": language_model.tokenizer_fingerprint(model), "chat_template": tokenizer.chat_template,
                 "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(), "decoding": decoding.sampling()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:12]


def file_name(corpus: str, model: str, decoding: Decoding) -> str:
    """``<set>-<key>.jsonl``: what an activation cache's key records of a generated corpus, wherever it lies."""
    name = prompt_set_name(corpus)
    decoding.check()
    return f"{name}-{corpus_key(model, name, decoding)}.jsonl"


def corpus_path(corpus: str, model: str, decoding: Decoding, progress: bool = True) -> Path:
    """The generated corpus's .jsonl file: the shipped copy, the cached one, or written now."""
    name, stored = prompt_set_name(corpus), file_name(corpus, model, decoding)
    for shipped in (SHIPPED / f"{stored}.xz", SHIPPED / stored):
        if shipped.is_file():
            return shipped
    path = Path(decoding.cache_dir) / stored
    if not path.is_file():
        write_corpus(path, model, name, decoding, progress)
    return path


def in_progress_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.in-progress")


def done_rows(partial: Path) -> list[dict]:
    """The whole lines of a killed run's partial file (its last line may be cut short)."""
    if not partial.is_file():
        return []
    rows = []
    for line in partial.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_corpus(path: Path, model: str, name: str, decoding: Decoding, progress: bool = True) -> None:
    prompts = prompt_sets.build(name, decoding.prompts, decoding.seed)
    partial = in_progress_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a partial file is trusted no further than its rows answer this key's prompts
    rows = [row for row in done_rows(partial) if row["index"] < len(prompts)
            and row["prompt"] == prompts[row["index"]].text]
    with partial.open("w") as handle:  # rewritten without a cut-off last line
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    done = {row["index"] for row in rows}
    if done:
        log.info(f"generated corpus: resuming {path.name} with {len(done)}/{len(prompts)} answers written")
    lm, tokenizer = language_model.load(model)
    chat_ids = chat_prompt_ids(tokenizer, [p.text for p in prompts])
    todo = sorted((i for i in range(len(prompts)) if i not in done), key=lambda i: (len(chat_ids[i]), i))
    end_ids = end_of_turn_ids(tokenizer, lm)
    bar = tqdm(total=len(prompts), initial=len(done), unit="prompt", desc=f"generate {name}", disable=not progress,
               dynamic_ncols=True)
    started, new = time.monotonic(), 0
    for begin in range(0, len(todo), decoding.batch_size):
        batch = todo[begin:begin + decoding.batch_size]
        input_ids, mask = left_padded([chat_ids[i] for i in batch], tokenizer.pad_token_id)
        answers = decode(lm, input_ids, mask, decoding.max_new_tokens, end_ids, decoding.temperature,
                         decoding.top_p, [decoding.seed * 1_000_003 + i for i in batch])
        with partial.open("a") as handle:
            for i, answer in zip(batch, answers):
                handle.write(json.dumps(document(prompts[i], i, answer, end_ids, tokenizer)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        new += sum(map(len, answers))
        bar.update(len(batch))
        bar.set_postfix_str(f"{new / (time.monotonic() - started):.0f} tok/s")
    bar.close()
    rows = sorted(done_rows(partial), key=lambda row: row["index"])
    written = sum(row["new_tokens"] for row in rows)
    write_whole(path, "".join(json.dumps(row) + "\n" for row in rows))
    partial.unlink()
    log.info(f"generated corpus: {len(rows)} answers, {written} generated tokens, into {path}")


def document(prompt: prompt_sets.Prompt, index: int, answer: list[int], end_ids: set[int], tokenizer) -> dict:
    finished = bool(answer) and answer[-1] in end_ids
    response = tokenizer.decode(answer[:-1] if finished else answer, skip_special_tokens=True)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text},
                                          {"role": "assistant", "content": response}], tokenize=False)
    return {"index": index, "id": f"{prompt.kind}-{index}", "kind": prompt.kind, "prompt": prompt.text,
            "answer": prompt.answer, "response": response,
            "new_tokens": len(answer), "finished": finished,
            "correct": None if prompt.answer is None else prompt_sets.is_correct(response, prompt), "text": text}
