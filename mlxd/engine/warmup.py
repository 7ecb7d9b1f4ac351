"""Start-up run of the batch machinery, before the server says it is ready.

Each path a request can take runs once (one sequence; two of different lengths, which pads; one
that starts from a cached prefix, which merges a cache with history into the batch; greedy and
sampled; on a GPU also a full-length prefill chunk), so no request pays a first-use cost such as
a kernel compile. The run also tells the engine two facts it needs: the model's real output width
and the KV bytes one token costs.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import trim_prompt_cache

from mlxd.engine.sampling import SamplingParams, make_sampler

TEXT = "Hello! Say something short."  # runs the prefill and decode kernels once
DECODE_TOKENS = 4


@dataclass(frozen=True)
class WarmUp:
    vocab_size: int  # the model's output width (often padded past the tokenizer's)
    kv_bytes_per_token: int  # in full precision
    kv_quantized_bytes_per_token: int  # once quantized (0: mlx-lm's own, unquantized caches)
    seconds: float


def run(gen, tokenizer, long_prompt: int, new_cache: Callable[[], list | None]) -> WarmUp:
    """Drive ``gen`` (an idle mlx-lm ``BatchGenerator``) through every warm-up group; on a GPU
    one group prefills ``long_prompt`` tokens (a full chunk); ``new_cache`` makes the cache
    each sequence starts with (None: mlx-lm's own)."""
    start = time.perf_counter()
    base = tokenizer.encode(TEXT, add_special_tokens=False) or [0]
    groups = [[base], [base, base[: max(1, len(base) // 2)]]]
    if mx.default_device() == mx.gpu:
        # GPU kernels differ by prefill length class: compile a long chunk now, not on the first
        # real request (a 36 s stall was measured on an H200 without this). On the CPU nothing
        # compiles and a long prefill only costs seconds of start-up.
        groups.append([(base * (long_prompt // len(base) + 1))[:long_prompt]])
    vocab_size, kept = 0, None
    for group in groups:
        caches = [new_cache() for _ in group]
        vocab_size, kept = _generate(gen, group, caches, kept)
    # A prompt that continues a cached one: its cache joins the batch with history.
    assert kept is not None
    cache, tokens = kept
    trim_prompt_cache(cache, len(tokens) - len(base))
    _generate(gen, [base[:2], base], [cache, new_cache()], None)
    mx.clear_cache()
    quantized = sum(getattr(c, "quantized_bytes_per_token", lambda: 0)() for c in cache)
    return WarmUp(vocab_size, kv_bytes_per_token(cache), quantized, time.perf_counter() - start)


def _generate(gen, group: list[list[int]], caches: list, kept):
    greedy = SamplingParams(max_tokens=DECODE_TOKENS, temperature=0.0)
    # Seeded: the ranks of a group must sample the same tokens (engine/group.py).
    sampled = SamplingParams(max_tokens=DECODE_TOKENS, temperature=1.0, top_p=0.9, seed=0)
    uids = gen.insert(
        [list(p) for p in group],
        max_tokens=[DECODE_TOKENS] * len(group),
        caches=None if all(c is None for c in caches) else caches,
        samplers=[make_sampler(p) for p in (greedy, sampled)[: len(group)]],
        logits_processors=[[] for _ in group],
    )
    left, vocab_size = set(uids), 0
    while left:
        for r in gen.next()[1]:
            vocab_size = r.logprobs.shape[-1]
            if r.finish_reason is not None:
                left.discard(r.uid)
                if kept is None:
                    kept = (copy.deepcopy(r.prompt_cache), list(r.all_tokens))
    return vocab_size, kept


def kv_bytes_per_token(cache) -> int:
    """KV bytes one token costs in full precision, read off a filled cache (keys and values,
    every layer)."""
    total = 0
    for layer in cache:
        if hasattr(layer, "full_precision_bytes_per_token"):
            total += layer.full_precision_bytes_per_token()
            continue
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            continue
        # KVCache allocates in steps; shape (batch, heads, allocated_tokens, head_dim).
        total += (keys.nbytes + values.nbytes) // max(keys.shape[2], 1)
    return total
