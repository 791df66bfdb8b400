"""Writing a corpus: activations/decoding.py's batched decode against a bare ``model.generate``, tokens/s on the
same batch, greedy so that both write the same tokens (checked).

    python -m benchmarks.generation [--out results/generation_speed.json] [--batch 32] [--tokens 128]

decode_vs_generate  SmolLM2-135M-Instruct answering ``--batch`` prompts of the `reasoning` set through its chat
                    template, at most ``--tokens`` new tokens each: generated tokens per second of ``decode``
                    (finished rows leave the batch and the KV cache) over those of ``model.generate`` (which
                    carries finished rows to the longest answer). Both use the KV cache.

Variants run interleaved, round by round; the ratio is the median over rounds. The last line is JSON.
"""
import argparse
import json
import os
import statistics
import time
import warnings

import torch

from activations import language_model, prompt_sets
from activations.decoding import chat_prompt_ids, decode, end_of_turn_ids, left_padded
from analysis.stamp import write_json_result

ROUNDS = 3

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the figures, stamped, to this JSON file")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    load_average = os.getloadavg()[0]
    lm, tokenizer = language_model.load("smollm2")
    prompts = prompt_sets.build("reasoning", args.batch, seed=0)
    input_ids, mask = left_padded(chat_prompt_ids(tokenizer, [p.text for p in prompts]), tokenizer.pad_token_id)
    end_ids = end_of_turn_ids(tokenizer, lm)

    def ours() -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        answers = decode(lm, input_ids, mask, args.tokens, end_ids)
        return time.perf_counter() - start, answers

    def bare() -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        with torch.no_grad():
            out = lm.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=args.tokens, do_sample=False,
                              eos_token_id=sorted(end_ids), pad_token_id=tokenizer.pad_token_id)
        seconds = time.perf_counter() - start
        answers = []
        for row in out[:, input_ids.shape[1]:].tolist():  # up to and including the first end token, as decode's
            ends = [i for i, token in enumerate(row) if token in end_ids]
            answers.append(row[:ends[0] + 1] if ends else row)
        return seconds, answers

    times = {"decode": [], "generate": []}
    for _ in range(ROUNDS):
        seconds, ours_answers = ours()
        times["decode"].append(seconds)
        seconds, bare_answers = bare()
        times["generate"].append(seconds)
    same = sum(a == b for a, b in zip(ours_answers, bare_answers))
    tokens = sum(map(len, ours_answers))
    ratio = statistics.median(g / d for d, g in zip(times["decode"], times["generate"]))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_average:.1f} before")
    print(f"SmolLM2-135M-Instruct, {args.batch} prompts, at most {args.tokens} new tokens: {tokens} generated tokens "
          f"({sum(a[-1] in end_ids for a in ours_answers)} answers ended), identical answers {same}/{args.batch}, "
          f"{ROUNDS} rounds")
    for name, values in times.items():
        print(f"{name:8s} median {statistics.median(values):6.2f} s, {tokens / statistics.median(values):6.0f} tok/s")
    result = {"decode_vs_generate": round(ratio, 3),
              "decode_tokens_per_s": round(tokens / statistics.median(times["decode"]), 1)}
    if args.out:
        details = {"seconds": times, "tokens": tokens, "batch": args.batch, "max_new_tokens": args.tokens,
                   "identical_answers": same}
        print(f"wrote {write_json_result(args.out, result | details)}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
