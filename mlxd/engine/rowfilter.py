"""Taking sequences out of a batch's KV cache in one gather.

mlx-lm's ``BatchKVCache.filter`` gathers the rows that stay and then drops the padding every row
shares with a slice (``keys[..., shift:, :]``): a strided view, which the next cache write cannot
update in place, so MLX copies the whole cache again (this project's CPU: 164 ms for a 2 GB
cache, the write itself 0.4 ms). ``kept_rows`` gathers into a fresh array that the next write
updates in place, and drops shared padding only once it reaches ``SHIFT_MIN`` positions (a
strided gather is slower: 517 ms against 143 ms there); below that the padding stays and
attention reads that many masked positions more per row. mlxd's quantized cache (kvcache.py)
filters each of its parts this way.

``filter_batch`` does the same for mlx-lm's ``BatchKVCache``, and ``install`` (the engine calls
it) puts it in that class's place, so every batch of plain caches (what ``KVCache.merge`` makes)
filters this way. On an H200 (8B, 35 rows of ~1800 tokens, bench/join_cost.py with and without
--rowfilter, bench/results/gpu-h200-join-chunks-20261130.txt and
gpu-h200-join-rowfilter-20261130.txt) it did not change the step after a finish, 64-80 ms with
either filter against 20-35 ms around it: the gather is lazy, so it runs in that step together
with allocating the smaller cache, and there the second copy was not what made the step slow.
The H200 server figures since 2026-11-30's runs c and d (bench/results) were taken with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache

# Shared left padding dropped on a filter once it is this long: one cache step (mlx-lm allocates
# 256 positions at a time), so a cache that lost its long rows shrinks back by whole steps.
SHIFT_MIN = 256


def shift_for(left_padding: mx.array) -> int:
    """The shared padding (the smallest row's) to drop, 0 while it is under ``SHIFT_MIN``."""
    values: list = left_padding.tolist()  # type: ignore[assignment]  # 1-d: a list of ints
    shared = min((int(v) for v in values), default=0)
    return shared if shared >= SHIFT_MIN else 0


def is_identity(cache, batch_indices) -> bool:
    """Whether ``batch_indices`` keeps every row of ``cache`` in its order."""
    rows = cache.offset.shape[0] if cache.offset.ndim else 1
    return list(batch_indices) == list(range(rows))


def kept_rows(a: mx.array, rows: mx.array, shift: int) -> mx.array:
    """Rows ``rows`` of ``a`` (batch axis first, positions third) without its first ``shift``
    positions, gathered into a new contiguous array."""
    if shift:
        a = a[..., shift:, :]
    return mx.take(a, rows, axis=0)


def filter_rows(cache, batch_indices, take: Callable[[Any, mx.array, int], Any]) -> mx.array | None:
    """Keep these rows of a left-padded batch cache, in this order: ``cache`` has mlx-lm's
    ``BatchKVCache`` fields (``keys``, ``values``, ``offset``, ``left_padding``, ``_idx``), and
    ``take(stored, rows, shift)`` gathers what its keys and values hold (``kept_rows`` for an
    array, each part for mlxd's quantized triples). Keeping every row in order (mlx-lm's
    prompt batch splits that way when all its prompts are done) copies nothing. Returns the rows
    kept, as an index array, or None when that was every row in order (nothing changed)."""
    if is_identity(cache, batch_indices):
        return None
    rows = mx.array(batch_indices, dtype=mx.int32)
    cache.offset = cache.offset[rows]
    cache.left_padding = cache.left_padding[rows]
    shift = shift_for(cache.left_padding)
    if cache.keys is not None and cache.values is not None:
        cache.keys = take(cache.keys, rows, shift)
        cache.values = take(cache.values, rows, shift)
    if shift:
        cache._idx -= shift
        cache.left_padding = cache.left_padding - shift
    return rows


def filter_batch(cache: BatchKVCache, batch_indices) -> None:
    """``BatchKVCache.filter`` (keep these rows, in this order) in one copy of the cache."""
    filter_rows(cache, batch_indices, kept_rows)


_ORIGINAL = BatchKVCache.filter


def install() -> None:
    """Use ``filter_batch`` for every ``BatchKVCache`` in this process (idempotent)."""
    BatchKVCache.filter = filter_batch  # type: ignore[method-assign]


def uninstall() -> None:
    """mlx-lm's own filter again (tests compare the two)."""
    BatchKVCache.filter = _ORIGINAL  # type: ignore[method-assign]
