"""Start-up run of the batch machinery: every path a request can take runs once.

The paths: one sequence; two of different lengths (which pads), one greedy and one sampled; on a
GPU a full-length prefill chunk; one that starts from a cached prefix (its cache merges into the
batch with history). Running each once means no request pays a first-use cost such as a kernel
compile. The first path also tells the engine two facts it needs: the model's real output width
and the KV bytes one token costs.

On a fresh CUDA machine those compiles are most of a first start (H200, 8B: one sequence 19.0 s,
the padded pair 16.3 s, the long chunk and the cached prefix 0.1 s each; a second start reads
them from MLX's kernel cache: 1.2 s in all). So ``--warm-up idle`` (the default) warms the
one-sequence path before the server is ready and the others in idle time, one at a time, like an
idle calibration (a request that arrives meanwhile waits for at most the one being run, and a
path a request takes before its turn compiles there as it would have in the warm-up); ``start``
runs them all before ready, as a group of ranks always does (its ranks must run the same steps).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.models.cache import trim_prompt_cache

from mlxd.engine.sampling import SamplingParams, make_sampler

log = logging.getLogger(__name__)

TEXT = "Hello! Say something short."  # runs the prefill and decode kernels once
DECODE_TOKENS = 4


@dataclass(frozen=True)
class WarmUp:
    vocab_size: int  # the model's output width (often padded past the tokenizer's)
    kv_bytes_per_token: int  # in full precision
    kv_quantized_bytes_per_token: int  # once quantized (0: mlx-lm's own, unquantized caches)
    seconds: float


class WarmUpRun:
    """The warm-up of one engine: ``first()`` before ready, then ``rest()``, one path per
    ``next()``, now (``finish``) or in idle time. Each path takes the batch generator to drive
    (the engine may have replaced it in between) and leaves it idle; ``long_prompt``: the prefill
    chunk a GPU warms (a full one); ``new_cache`` makes the cache each sequence starts with (None:
    mlx-lm's own)."""

    def __init__(
        self, tokenizer, long_prompt: int, new_cache: Callable[[], list | None], gpu: bool
    ) -> None:
        self._new_cache = new_cache
        self._gpu = gpu
        self._base = tokenizer.encode(TEXT, add_special_tokens=False) or [0]
        self._long_prompt = long_prompt
        self._kept: tuple | None = None  # (cache, tokens) of the first path's sequence

    def first(self, gen) -> WarmUp:
        """The one-sequence path, and the facts it teaches."""
        began = time.perf_counter()
        vocab_size, self._kept = _generate(gen, [self._base], [self._new_cache()], None)
        _took(f"1 prompt of {len(self._base)} tokens", began)
        assert self._kept is not None
        cache = self._kept[0]
        quantized = sum(getattr(c, "quantized_bytes_per_token", lambda: 0)() for c in cache)
        return WarmUp(vocab_size, kv_bytes_per_token(cache), quantized, time.perf_counter() - began)

    def rest(self) -> Iterator[Callable[[object], None]]:
        """The other paths, each a function of the generator to drive."""
        base = self._base
        yield lambda gen: self._group(gen, [base, base[: max(1, len(base) // 2)]])
        if self._gpu:
            # GPU kernels differ by prefill length class: compile a long chunk too (a 36 s
            # stall was measured on an H200 without it). On the CPU nothing compiles for it.
            long = (base * (self._long_prompt // len(base) + 1))[: self._long_prompt]
            yield lambda gen: self._group(gen, [long])
        yield self._cached_prefix

    def finish(self, gen) -> float:
        """Every path after the first, now; the seconds they took."""
        began = time.perf_counter()
        for path in self.rest():
            path(gen)
        return time.perf_counter() - began

    def _group(self, gen, group: list[list[int]]) -> None:
        began = time.perf_counter()
        _generate(gen, group, [self._new_cache() for _ in group], self._kept)
        _took(f"{len(group)} prompt(s) of {max(map(len, group))} tokens", began)
        mx.clear_cache()

    def _cached_prefix(self, gen) -> None:
        """A prompt that continues a cached one: its cache joins the batch with history."""
        assert self._kept is not None  # first() ran
        began = time.perf_counter()
        cache, tokens = self._kept
        self._kept = None
        trim_prompt_cache(cache, len(tokens) - len(self._base))
        _generate(gen, [self._base[:2], self._base], [cache, self._new_cache()], None)
        _took("a cached prefix joining the batch", began)
        mx.clear_cache()


def _took(what: str, began: float) -> None:
    log.debug("warm-up: %s in %.2fs", what, time.perf_counter() - began)


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
