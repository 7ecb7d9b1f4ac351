"""Start-up run of the batch machinery, before the server says it is ready.

Each path a request can take runs once (one sequence; two of different lengths, which pads;
greedy and sampled; on a GPU also a full-length prefill chunk), so no request pays a first-use
cost such as a kernel compile. The run also tells the engine two facts it needs: the model's real
output width and the KV bytes one token costs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlx.core as mx

from mlxd.engine.sampling import SamplingParams, make_sampler

TEXT = "Hello! Say something short."  # runs the prefill and decode kernels once
DECODE_TOKENS = 4
LONG_PROMPT = 512  # tokens; a full prefill chunk at the default --prefill-step-size


@dataclass(frozen=True)
class WarmUp:
    vocab_size: int  # the model's output width (often padded past the tokenizer's)
    kv_bytes_per_token: int
    seconds: float


def run(gen, tokenizer) -> WarmUp:
    """Drive ``gen`` (an idle mlx-lm ``BatchGenerator``) through every warm-up group."""
    start = time.perf_counter()
    base = tokenizer.encode(TEXT, add_special_tokens=False) or [0]
    greedy = SamplingParams(max_tokens=DECODE_TOKENS, temperature=0.0)
    # Seeded: the ranks of a group must sample the same tokens (engine/group.py).
    sampled = SamplingParams(max_tokens=DECODE_TOKENS, temperature=1.0, top_p=0.9, seed=0)
    groups = [[base], [base, base[: max(1, len(base) // 2)]]]
    if mx.default_device() == mx.gpu:
        # GPU kernels differ by prefill length class: compile a long chunk now, not on the first
        # real request (a 36 s stall was measured on an H200 without this). On the CPU nothing
        # compiles and a long prefill only costs seconds of start-up.
        groups.append([(base * (LONG_PROMPT // len(base) + 1))[:LONG_PROMPT]])
    vocab_size, kv_bytes = 0, 0
    for group in groups:
        uids = gen.insert(
            [list(p) for p in group],
            max_tokens=[DECODE_TOKENS] * len(group),
            samplers=[make_sampler(p) for p in (greedy, sampled)[: len(group)]],
            logits_processors=[[] for _ in group],
        )
        left = set(uids)
        while left:
            for r in gen.next()[1]:
                vocab_size = r.logprobs.shape[-1]
                if r.finish_reason is not None:
                    left.discard(r.uid)
                    kv_bytes = kv_bytes_per_token(r.prompt_cache)  # holds exactly its tokens
    mx.clear_cache()
    return WarmUp(vocab_size, kv_bytes, time.perf_counter() - start)


def kv_bytes_per_token(cache) -> int:
    """KV bytes one token costs, read off a filled cache (keys and values, every layer)."""
    total = 0
    for layer in cache:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            continue
        # KVCache allocates in steps; shape (batch, heads, allocated_tokens, head_dim).
        total += (keys.nbytes + values.nbytes) // max(keys.shape[2], 1)
    return total
