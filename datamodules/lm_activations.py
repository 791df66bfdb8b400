"""A language model's activations at one layer and site, as data.

Harvested once into the on-disk cache (``cache: true``, the default) and read back through shuffled
shard windows, never loaded whole; or (``cache: false``) harvested on the fly every epoch through a
mixing buffer. Val and test tokens, and a fixed sample of train tokens for the read-outs fitted at
the end, are held in memory as ``splits``, like the other datamodules'.
"""
import functools
import logging
import math

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from activations import generated_corpus, language_model
from activations.cache import ActivationCache
from activations.corpus import SPLITS, fingerprint, read_documents, split_documents, tokenize
from activations.harvest import activation_batches, harvest, norm_caps
from datamodules.resumable import ResumableBatches
from datamodules.tensor_batches import TensorBatches, rank_and_world_size

log = logging.getLogger(__name__)


class ShardBatches(ResumableBatches):
    """Shuffled batches from memory-mapped shards: the shard order is shuffled each epoch and the rows
    of ``window`` shards at a time are loaded and permuted (a cache larger than RAM works). Batches are
    planned as global row numbers, so a resumed epoch skips its served batches without reading them."""

    def __init__(self, shards: list[np.ndarray], tokens: np.ndarray, batch_size: int, window: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.shards, self.tokens, self.batch_size, self.window = shards, tokens, batch_size, window
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def __len__(self) -> int:
        return math.ceil(self.offsets[-1] // self.world_size / self.batch_size)

    def planned_batches(self):
        """Each batch as global row numbers, with the shards it may read. The plan is the same on every rank:
        global batches of world_size x batch_size rows, of which each rank takes its stride, so N ranks see
        the batches one process would see at N times the batch size."""
        generator, rest = self.generator(), torch.empty(0, dtype=torch.long)
        order = torch.randperm(len(self.shards), generator=generator).tolist()
        global_batch = self.batch_size * self.world_size
        for start in range(0, len(order), self.window):
            picked = order[start:start + self.window]
            needed = set(picked) | set(self.shard_of(rest).tolist())
            rows = torch.cat([rest] + [torch.arange(self.offsets[i], self.offsets[i + 1]) for i in picked])
            rows = rows[torch.randperm(len(rows), generator=generator)]
            if start + self.window >= len(order):  # the last window serves every row (see even_split)
                full = len(rows) - len(rows) % self.world_size
            else:
                full = len(rows) // global_batch * global_batch
            for begin in range(0, full, global_batch):
                yield needed, rows[begin:min(begin + global_batch, full)][self.rank::self.world_size]
            rest = rows[full:]  # rows short of a batch join the next window

    def shard_of(self, rows: Tensor) -> Tensor:
        return torch.from_numpy(np.searchsorted(self.offsets, rows.numpy(), side="right") - 1)

    def batches(self, skip: int):
        loaded: dict[int, Tensor] = {}  # the window's shards, each read whole (sequential reads)
        for served, (needed, rows) in enumerate(self.planned_batches()):
            if served < skip:
                continue
            loaded = {i: loaded[i] if i in loaded else torch.from_numpy(np.array(self.shards[i], dtype=np.float32))
                      for i in needed}
            shard = self.shard_of(rows)
            x = torch.empty(len(rows), self.shards[0].shape[1])
            for i in shard.unique().tolist():
                mask = shard == i
                x[mask] = loaded[i][rows[mask] - int(self.offsets[i])]
            yield x, torch.from_numpy(self.tokens[rows.numpy()]).long()


class MixingBuffer(ResumableBatches):
    """Activations harvested on the fly: a buffer of ``size`` tokens is shuffled, its first half served
    as batches and its second half kept to mix with the next fill (SAELens's mixing buffer)."""

    def __init__(self, datamodule: "ActivationDataModule", size: int, seed: int):
        self.dm, self.size, self.seed = datamodule, size, seed

    def __len__(self) -> int:
        return math.ceil(self.dm.sequences["train"].tokens / self.dm.batch_size)

    def batches(self, skip: int):
        """A resumed epoch harvests its served batches again and drops them: exact, but not free."""
        for served, batch in enumerate(self.harvested_batches()):
            if served >= skip:
                yield batch

    def harvested_batches(self):
        dm, generator = self.dm, self.generator()
        buffer_x, buffer_t = [], []
        batches = activation_batches(dm.lm, dm.modules, dm.sequences["train"], dm.harvest_batch_size,
                                     caps=dm.norm_caps)
        for end, ids, captured, _ in batches:
            buffer_x.append(captured[dm.layer])
            buffer_t.append(ids)
            if sum(len(b) for b in buffer_t) < self.size and end < len(dm.sequences["train"]):
                continue
            x, t = torch.cat(buffer_x), torch.cat(buffer_t)
            index = torch.randperm(len(x), generator=generator)
            last = end == len(dm.sequences["train"])
            serve = index if last else index[:len(index) // 2 // dm.batch_size * dm.batch_size]
            for begin in range(0, len(serve), dm.batch_size):
                chunk = serve[begin:begin + dm.batch_size]
                yield x[chunk], t[chunk]
            kept = index[len(serve):]
            buffer_x, buffer_t = [x[kept]], [t[kept]]


class ActivationDataModule(pl.LightningDataModule):
    def __init__(self, model: str, layer: int, input_dim: int, layers: list[int] | None = None, site: str = "resid",
                 corpus: str | list[str] = "pydocs", generation: dict | None = None, text_field: str = "text",
                 context_length: int = 128,
                 keep_special_tokens: bool = False, keep_first_position: bool = False,
                 max_norm_ratio: float | None = None, split_fractions: dict | None = None, split_seed: int = 0,
                 max_tokens: dict | None = None, cache: bool = True, cache_dir: str = "cache/activations",
                 dtype: str = "float16", model_dtype: str = "float32", device: str = "cpu",
                 harvest_batch_size: int = 32, shard_tokens: int = 65536, shuffle_window: int = 4,
                 mixing_buffer: int = 262144, scale_inputs: bool = False, readout_tokens: int = 20000,
                 batch_size: int = 4096, eval_batch_size: int = 4096, seed: int = 0, progress: bool = True):
        super().__init__()
        self.layers = sorted(set(layers or [layer]) | {layer})
        self.fractions = dict(split_fractions or {"train": 0.9, "val": 0.05, "test": 0.05})
        self.max_tokens = {split: (max_tokens or {}).get(split) for split in SPLITS}
        checks = [
            (batch_size > 0 and eval_batch_size > 0, f"data.batch_size must be > 0, got {batch_size}"),
            (dtype in ("float16", "float32"), f"data.dtype must be float16 or float32, got {dtype}"),
            (context_length > 1, f"data.context_length must be > 1, got {context_length}"),
            (harvest_batch_size > 0 and shard_tokens > 0 and shuffle_window > 0 and mixing_buffer > 0,
             "data.harvest_batch_size, shard_tokens, shuffle_window and mixing_buffer must be > 0"),
            (abs(sum(self.fractions.values()) - 1) < 1e-9 and all(f > 0 for f in self.fractions.values()),
             f"data.split_fractions must be positive and sum to 1, got {self.fractions}"),
            (all(n is None or n > 0 for n in self.max_tokens.values()),
             f"data.max_tokens must be > 0 or null, got {self.max_tokens}"),
            (max_norm_ratio is None or max_norm_ratio > 1,
             f"data.max_norm_ratio must be > 1 (x the median norm) or null, got {max_norm_ratio}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.config = language_model.load_config(model)  # an unknown model fails here, in one line
        width = int(self.config.hidden_size)
        if site in ("resid", "attn", "mlp") and input_dim != width:
            raise ValueError(f"data.input_dim={input_dim}, but {model} has width {width}")
        n_layers = self.config.num_hidden_layers
        if not all(0 <= layer < n_layers for layer in self.layers):
            raise ValueError(f"data.layer(s) {self.layers} outside the model: {model} has layers 0..{n_layers - 1}")
        limit = getattr(self.config, "max_position_embeddings", None)
        if limit and context_length > limit:
            raise ValueError(f"data.context_length={context_length} is above {model}'s limit of {limit} positions")
        language_model.site_module_names(language_model.skeleton(self.config), self.layers, site)  # a missing site
        self.corpus = [corpus] if isinstance(corpus, str) else list(corpus)
        self.decoding = generated_corpus.Decoding(**(generation or {}))
        if not self.corpus:
            raise ValueError("data.corpus is an empty list: name at least one corpus")
        for source in self.corpus:  # a missing corpus, unknown prompt set or model that cannot chat fails here
            if source.startswith(generated_corpus.PREFIX):
                generated_corpus.prompt_set_name(source)
                self.decoding.check()
                generated_corpus.chat_tokenizer(model)
            else:
                fingerprint(source, text_field)
        self.model_name, self.layer, self.input_dim, self.site = model, layer, input_dim, site
        self.text_field, self.context_length = text_field, context_length
        self.keep_special_tokens, self.keep_first_position = keep_special_tokens, keep_first_position
        self.max_norm_ratio = max_norm_ratio
        self.norm_caps: dict[int, float] | None = None
        self.left_out: dict[str, list[dict]] = {}  # split -> the tokens the norm rule left out
        self.split_seed = split_seed
        self.use_cache, self.cache_dir, self.dtype, self.model_dtype, self.device = cache, cache_dir, dtype, \
            model_dtype, device
        self.harvest_batch_size, self.shard_tokens, self.shuffle_window = harvest_batch_size, shard_tokens, \
            shuffle_window
        self.mixing_buffer, self.scale_inputs, self.readout_tokens = mixing_buffer, scale_inputs, readout_tokens
        self.batch_size, self.eval_batch_size, self.seed, self.progress = batch_size, eval_batch_size, seed, progress
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.input_scale: float | None = None
        self.train_mean: Tensor | None = None

    def cache_key(self) -> dict:
        return {"model": self.model_name, "tokenizer": language_model.tokenizer_fingerprint(self.model_name),
                "layers": self.layers, "site": self.site,
                "corpus": "+".join(self.corpus_fingerprint(source) for source in self.corpus),
                "context_length": self.context_length,
                "keep_special_tokens": self.keep_special_tokens, "keep_first_position": self.keep_first_position,
                "max_norm_ratio": self.max_norm_ratio, "split_fractions": self.fractions,
                "split_seed": self.split_seed, "max_tokens": self.max_tokens, "dtype": self.dtype,
                "model_dtype": self.model_dtype}

    def corpus_fingerprint(self, source: str) -> str:
        if source.startswith(generated_corpus.PREFIX):  # its key, whether shipped (.xz) or generated here
            return generated_corpus.file_name(source, self.model_name, self.decoding)
        return fingerprint(source, self.text_field)

    @functools.cached_property
    def corpus_files(self) -> list[str]:
        """Each corpus as read: a generated one as its file (written first where neither shipped nor cached)."""
        return [str(generated_corpus.corpus_path(source, self.model_name, self.decoding, self.progress))
                if source.startswith(generated_corpus.PREFIX) else source for source in self.corpus]

    def load_lm(self) -> None:
        """The model, its hooked modules and the tokenised splits (also what downstream fidelity needs)."""
        if hasattr(self, "lm"):
            return
        self.lm, self.tokenizer = language_model.load(self.model_name, self.model_dtype, self.device)
        self.modules = language_model.site_module_names(self.lm, self.layers, self.site)
        documents = [doc for path in self.corpus_files for doc in read_documents(path, self.text_field)]
        texts = split_documents(documents, self.fractions, self.split_seed)
        self.sequences = {split: tokenize(texts[split], self.tokenizer, self.context_length, self.keep_special_tokens,
                                          self.max_tokens[split], self.keep_first_position)
                          for split in SPLITS}
        empty = [split for split, seqs in self.sequences.items() if seqs.tokens == 0]
        if empty:
            raise ValueError(f"data.corpus={'+'.join(self.corpus)} gives no tokens to harvest in split(s) {empty}")
        self.mark_left_out()

    def mark_left_out(self) -> None:
        """The left-out tokens are no longer harvested positions of the tokenised windows: downstream fidelity
        splices only harvested positions, so these keep their clean activation."""
        if not hasattr(self, "sequences"):
            return
        for split, tokens in self.left_out.items():
            for token in tokens:
                self.sequences[split].keep[token["sequence"], token["position"]] = False

    def left_out_summary(self, largest: int = 5) -> dict:
        """What the norm rule removed, for metrics.json: the rule, each layer's cap, the count per split, and
        the largest left-out tokens by their norm at the trained layer."""
        tokens = [(split, token) for split, left in self.left_out.items() for token in left]
        tokens.sort(key=lambda item: -item[1]["norms"][str(self.layer)])
        tokenizer = language_model.load_tokenizer(self.model_name) if tokens else None
        return {"max_norm_ratio": self.max_norm_ratio,
                "norm_cap": None if self.norm_caps is None else round(self.norm_caps[self.layer], 2),
                "removed": {split: len(left) for split, left in self.left_out.items()},
                "largest": [{"split": split, "token": tokenizer.decode([token["token"]]),
                             "position": token["position"], "norm": token["norms"][str(self.layer)]}
                            for split, token in tokens[:largest]]}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.use_cache:
            self.setup_from_cache()
        else:
            self.setup_streaming()
        width = self.splits["val"][0].shape[1]
        if width != self.input_dim:
            raise ValueError(f"data.input_dim={self.input_dim}, but site {self.site} of {self.model_name} "
                             f"has width {width}")

    def setup_from_cache(self) -> None:
        cache = ActivationCache(self.cache_dir, self.cache_key())
        manifest = cache.manifest()
        if manifest and all(state["complete"] for state in manifest["splits"].values()):
            log.info(f"activation cache: reusing {cache.dir}")
        else:
            self.load_lm()
            manifest = harvest(cache, self.lm, self.modules, self.sequences, self.input_dim,
                               self.harvest_batch_size, self.shard_tokens, self.progress, self.max_norm_ratio)
        caps = manifest.get("norm_caps")
        self.norm_caps = None if caps is None else {int(layer): cap for layer, cap in caps.items()}
        self.left_out = {split: cache.left_out(manifest, split) for split in SPLITS}
        self.mark_left_out()
        shards = {split: cache.open(manifest, split, self.layer) for split in SPLITS}
        tokens = {split: cache.tokens(manifest, split) for split in shards}
        self.train_shards, self.train_tokens = shards["train"], tokens["train"]
        total, norm_sum, rows = cache.statistics(manifest, "train", self.layer)
        self.set_train_statistics(torch.from_numpy(total / rows).float(), norm_sum / rows)
        for split in ("val", "test"):
            x = torch.from_numpy(np.concatenate(shards[split])).float()
            self.splits[split] = (x, torch.from_numpy(tokens[split]).long())
        # a fixed random sample of train tokens for the read-outs, gathered shard by shard
        sample = torch.randperm(len(self.train_tokens), generator=torch.Generator().manual_seed(0))
        sample = sample[:self.readout_tokens].sort().values.numpy()
        offsets = np.cumsum([0] + [len(shard) for shard in self.train_shards])
        rows = [shard[sample[(sample >= lo) & (sample < hi)] - lo]
                for shard, lo, hi in zip(self.train_shards, offsets[:-1], offsets[1:])]
        self.splits["train"] = (torch.from_numpy(np.concatenate(rows)).float(),
                                torch.from_numpy(self.train_tokens[sample]).long())

    def setup_streaming(self) -> None:
        """No cache: val, test and a train sample are harvested into memory; train batches stream. The norm rule
        applies to all of them; only the held splits' left-out tokens are recorded."""
        self.load_lm()
        self.norm_caps = norm_caps(self.lm, self.modules, self.sequences["train"], self.harvest_batch_size,
                                   self.max_norm_ratio)
        for split in ("val", "test"):
            self.splits[split], self.left_out[split] = self.harvest_in_memory(self.sequences[split])
        train_sample = self.sequences["train"][:max(1, self.readout_tokens // self.context_length)]
        self.splits["train"], self.left_out["train"] = self.harvest_in_memory(train_sample)
        self.mark_left_out()
        x = self.splits["train"][0]
        self.set_train_statistics(x.double().mean(0).float(), float(x.double().norm(dim=1).mean()))

    def harvest_in_memory(self, sequences) -> tuple[tuple[Tensor, Tensor], list[dict]]:
        """((activations at this layer, token ids) of every harvested position, the left-out tokens)."""
        parts = list(activation_batches(self.lm, self.modules, sequences, self.harvest_batch_size,
                                        caps=self.norm_caps))
        held = torch.cat([captured[self.layer] for _, _, captured, _ in parts]), torch.cat([p[1] for p in parts])
        return held, [token for *_, left_out in parts for token in left_out]

    def set_train_statistics(self, mean: Tensor, mean_norm: float) -> None:
        self.train_mean = mean
        if self.scale_inputs:  # E||s x|| = sqrt(d) on train (SAELens's activation scaler)
            self.input_scale = math.sqrt(self.input_dim) / mean_norm
            log.info(f"input scaling: x * {self.input_scale:.4g} (E||x|| = {mean_norm:.4g} on train)")

    def train_dataloader(self):
        if not self.use_cache:
            return MixingBuffer(self, self.mixing_buffer, self.seed).following(self.trainer)
        return ShardBatches(self.train_shards, self.train_tokens, self.batch_size, self.shuffle_window, self.seed,
                            *rank_and_world_size(self.trainer)).following(self.trainer)

    def eval_batches(self, split: str) -> TensorBatches:
        return TensorBatches(self.splits[split], self.eval_batch_size, False, self.seed,
                             *rank_and_world_size(self.trainer))

    def val_dataloader(self):
        return self.eval_batches("val")

    def test_dataloader(self):
        return self.eval_batches("test")
