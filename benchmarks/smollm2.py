"""SmolLM2-135M's harvest and load, as ratios and seconds measured side by side.

    python -m benchmarks.smollm2 [--out results/smollm2_speed.json]

harvest_vs_bare   harvesting layer 18 (the default) into a fresh on-disk cache, tokens/s, against a bare
                  forward pass of the same model cut to its first 19 blocks (loaded with
                  num_hidden_layers=19: no hooks, no early stop, no writing) on the same batches.
cached_load_s     loading the model and tokenizer once the GGUF file has been dequantised and saved
                  (the first load of all converts it, untimed here).

Variants run interleaved, round by round; the ratio is the median over rounds. The last line is JSON.
"""
import argparse
import json
import logging
import os
import statistics
import tempfile
import time
import warnings

import torch
from transformers import AutoModelForCausalLM

from activations import language_model
from activations.cache import ActivationCache
from activations.harvest import harvest
from analysis.stamp import write_json_result
from datamodules.lm_activations import ActivationDataModule

LAYER, TOKENS, ROUNDS = 18, 4000, 3

logging.getLogger("datamodules.lm_activations").setLevel(logging.WARNING)
warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the figures, stamped, to this JSON file")
    args = parser.parse_args()
    load_average = os.getloadavg()[0]
    language_model.model_path("smollm2")  # the one-time conversion, outside every timing
    start = time.perf_counter()
    language_model.load("smollm2")
    cached_load = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as root:
        dm = ActivationDataModule(model="smollm2", layer=LAYER, input_dim=576, cache_dir=root, progress=False,
                                  max_tokens={"train": TOKENS, "val": 1, "test": 1})
        dm.load_lm()
        bare = AutoModelForCausalLM.from_pretrained(language_model.model_path("smollm2"),
                                                    num_hidden_layers=LAYER + 1).model.eval()
        sequences, size = dm.sequences["train"], dm.harvest_batch_size

        def harvest_seconds() -> float:
            cache = ActivationCache(tempfile.mkdtemp(dir=root), dm.cache_key())  # a fresh cache every round
            start = time.perf_counter()
            harvest(cache, dm.lm, dm.modules, {"train": sequences}, dm.input_dim, size, dm.shard_tokens,
                    progress=False)
            return time.perf_counter() - start

        def bare_seconds() -> float:
            start = time.perf_counter()
            with torch.inference_mode():
                for begin in range(0, len(sequences), size):
                    bare(input_ids=sequences.input_ids[begin:begin + size],
                         attention_mask=sequences.attention_mask[begin:begin + size])
            return time.perf_counter() - start

        times = {"harvest": [], "bare": []}
        for _ in range(ROUNDS):
            times["harvest"].append(harvest_seconds())
            times["bare"].append(bare_seconds())
    tokens = sequences.tokens
    ratio = statistics.median(b / h for h, b in zip(times["harvest"], times["bare"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_average:.1f} before")
    print(f"SmolLM2-135M layer {LAYER}: {tokens} harvested tokens ({sequences.attention_mask.sum()} positions run) "
          f"per round, {ROUNDS} rounds")
    for name, values in times.items():
        print(f"{name:8s} median {statistics.median(values):6.2f} s, {tokens / statistics.median(values):6.0f} tok/s")
    print(f"cached load {cached_load:.2f} s")
    result = {"smollm2_harvest_vs_bare": round(ratio, 3), "smollm2_cached_load_s": round(cached_load, 2)}
    if args.out:
        print(f"wrote {write_json_result(args.out, result | {'seconds': times, 'tokens_per_round': tokens})}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
