"""Text for harvesting: documents from the corpus shipped in data/pydocs (the Python documentation's
prose), local .txt / .jsonl files, or a Hugging Face dataset; split into train/val/test by document;
tokenised into fixed-length sequences with the tokenizer's own special tokens around each window."""
import hashlib
import json
import lzma
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SHIPPED = Path(__file__).resolve().parents[1] / "data" / "pydocs" / "corpus.jsonl.xz"
SPLITS = ("train", "val", "test")


@dataclass
class Sequences:
    """Token windows of one split, padded to the context length."""
    input_ids: Tensor  # [n, context_length]
    attention_mask: Tensor  # [n, context_length], 0 on padding
    keep: Tensor  # [n, context_length], the positions whose activations are harvested

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, rows: slice) -> "Sequences":
        return Sequences(self.input_ids[rows], self.attention_mask[rows], self.keep[rows])

    @property
    def tokens(self) -> int:
        return int(self.keep.sum())


def corpus_files(source: str) -> list[Path]:
    """``pydocs`` (shipped), a file, or a directory of .txt/.jsonl/.jsonl.xz files."""
    if source == "pydocs":
        return [SHIPPED]
    path = Path(source).expanduser()
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".xz")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise ValueError(f"data.corpus={source}: no such file, or no .txt/.jsonl files in it")
    return files


def fingerprint(source: str, text_field: str) -> str:
    """What the cache key records of the text: the content hash of local files, else the dataset name."""
    if source.startswith("hf:"):
        return f"{source}:{text_field}"
    digest = hashlib.md5()
    for path in corpus_files(source):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def read_file(path: Path) -> str:
    try:
        with lzma.open(path, "rt") if path.suffix == ".xz" else path.open() as handle:
            return handle.read()
    except (UnicodeDecodeError, lzma.LZMAError, EOFError) as error:
        raise ValueError(f"data.corpus: {path} is not UTF-8 text ({error})") from None


def read_documents(source: str, text_field: str = "text") -> list[tuple[str, str]]:
    """(id, text) pairs. A .txt file is one document; each .jsonl line is one (its ``text_field``)."""
    if source.startswith("hf:"):  # hf:<name>[:<split>]
        import datasets  # optional: only users with a network and the `datasets` package get here

        name, _, split = source[3:].partition(":")
        rows = datasets.load_dataset(name, split=split or "train")
        documents = [(f"{name}/{i}", row[text_field]) for i, row in enumerate(rows)]
    else:
        documents = []
        for path in corpus_files(source):
            if path.suffix == ".txt":
                documents.append((str(path), read_file(path)))
                continue
            for i, line in enumerate(filter(None, read_file(path).splitlines())):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"data.corpus: {path} line {i + 1} is not JSON ({error})") from None
                if text_field not in row:
                    raise ValueError(f"data.corpus: {path} line {i + 1} has no field '{text_field}' "
                                     f"(data.text_field); it has {sorted(row)}")
                documents.append((row.get("id", f"{path}:{i}"), row[text_field]))
    documents = [(doc_id, text) for doc_id, text in documents if text and text.strip()]
    if not documents:
        raise ValueError(f"data.corpus={source} holds no text")
    return documents


def split_documents(documents: list[tuple[str, str]], fractions: dict[str, float],
                    seed: int) -> dict[str, list[str]]:
    """A seeded shuffle of the documents, cut into consecutive train/val/test blocks by fraction."""
    if len(documents) < len(SPLITS):
        raise ValueError(f"data.corpus has {len(documents)} document(s); train, val and test need one each")
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(fractions["val"] * len(documents)))
    n_test = max(1, round(fractions["test"] * len(documents)))
    cut = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}
    return {split: [documents[i][1] for i in indices] for split, indices in cut.items()}


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] and [SEP]; BOS; none)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full)) if full[i:i + len(plain)] == plain)
    return full[:start], full[start + len(plain):]


def tokenize(texts: list[str], tokenizer, context_length: int, keep_special_tokens: bool,
             max_tokens: int | None = None, keep_first_position: bool = False) -> Sequences:
    """Each document cut into windows of the tokens that fit between the tokenizer's special tokens,
    in order, until ``max_tokens`` harvested tokens; the last window of a document is padded.

    Harvested are the non-padding positions, less the special tokens (unless ``keep_special_tokens``) and
    less each window's first position (unless ``keep_first_position``): a causal LM's attention sink,
    whose residual norm dwarfs every other position's whether or not it holds a BOS token."""
    prefix, suffix = special_affixes(tokenizer)
    width = context_length - len(prefix) - len(suffix)
    if width < 1:
        raise ValueError(f"data.context_length={context_length} leaves no room beside "
                         f"{len(prefix) + len(suffix)} special tokens")
    special = set(tokenizer.all_special_ids)

    def harvested(row: list[int]) -> list[bool]:
        flags = [keep_special_tokens or token not in special for token in row]
        flags[0] = flags[0] and keep_first_position
        return flags

    rows, total = [], 0
    for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        for start in range(0, len(ids), width):
            row = prefix + ids[start:start + width] + suffix
            rows.append((row, harvested(row)))
            total += sum(rows[-1][1])
            if max_tokens is not None and total >= max_tokens:
                break
        if max_tokens is not None and total >= max_tokens:
            break
    input_ids = torch.full((len(rows), context_length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), context_length, dtype=torch.long)
    keep = torch.zeros(len(rows), context_length, dtype=torch.bool)
    for i, (row, flags) in enumerate(rows):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
        keep[i, :len(row)] = torch.tensor(flags)
    return Sequences(input_ids, attention_mask, keep)
