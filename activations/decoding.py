"""Batched decoding with the KV cache for a causal LM: greedy or nucleus sampling, each row from its own
seeded generator, rows leaving the batch (and its cache) as they end. model.generate carries finished rows
to the batch's longest answer; here every step costs only the rows still writing (benchmarks/generation.py
measures the two side by side). Greedy decoding gives model.generate's tokens (tests/test_generation.py)."""
import inspect

import torch
from torch import Tensor


def left_padded(rows: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(map(len, rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return input_ids, mask


def chat_prompt_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text as a user turn through the tokenizer's chat template, ready for the assistant's answer."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"] for text in texts]


def end_of_turn_ids(tokenizer, lm) -> set[int]:
    """The tokens that end an answer: the generation config's EOS ids and the tokenizer's EOS."""
    configured = lm.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids | {tokenizer.eos_token_id}


@torch.no_grad()
def decode(lm, input_ids: Tensor, attention_mask: Tensor, max_new_tokens: int, end_ids: set[int],
           temperature: float = 0.0, top_p: float = 1.0, seeds: list[int] | None = None) -> list[list[int]]:
    """Each left-padded row's new tokens, up to and including its end-of-turn token (or ``max_new_tokens``):
    greedy at temperature 0, else nucleus sampling, row i from a generator seeded ``seeds[i]``. Rows that
    end leave the batch and the KV cache (``Cache.batch_select_indices``)."""
    from transformers import DynamicCache

    device = next(lm.parameters()).device
    input_ids, mask = input_ids.to(device), attention_mask.to(device)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds or [0] * len(input_ids)]
    ends = torch.tensor(sorted(end_ids), device=device)
    cache = DynamicCache(config=lm.config)
    # transformers 5.x renamed past_key_values to cache (the old name warns, and goes in 5.40)
    cache_argument = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    live = torch.arange(len(input_ids))  # the original row of each row still in the batch
    answers: list[list[int]] = [[] for _ in range(len(input_ids))]
    step_ids, positions = input_ids, (mask.cumsum(-1) - 1).clamp(min=0)
    for _ in range(max_new_tokens):
        logits = lm(input_ids=step_ids, attention_mask=mask, position_ids=positions, **{cache_argument: cache},
                    use_cache=True, logits_to_keep=1).logits[:, -1].float().cpu()
        chosen = next_tokens(logits, temperature, top_p, [generators[i] for i in live])
        for row, token in zip(live.tolist(), chosen.tolist()):
            answers[row].append(token)
        going = ~torch.isin(chosen.to(device), ends)
        if not going.any():
            break
        if not going.all():
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            mask, live, chosen = mask[keep], live[keep.cpu()], chosen[keep.cpu()]
        mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
        step_ids, positions = chosen[:, None].to(device), mask.sum(-1, keepdim=True) - 1
    return answers


def next_tokens(logits: Tensor, temperature: float, top_p: float, generators: list[torch.Generator]) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:  # keep the smallest set of tokens whose probability reaches top_p (at least the top one)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return torch.stack([torch.multinomial(row, 1, generator=g)[0] for row, g in zip(probs, generators)])
