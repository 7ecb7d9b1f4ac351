"""Taking sequences out of a batch's KV cache in one copy, not two.

When a sequence finishes, mlx-lm's ``BatchKVCache.filter`` gathers the rows that stay (one copy of
the cache) and then drops the padding every row shares with a slice (``keys[..., shift:, :]``):
a strided view. The next step's cache write into that view cannot reuse its buffer, so MLX
copies the whole cache again. Measured on an H200 (8B, 35 rows of ~1800 tokens, bench/join_cost.py):
the filter 12-16 ms, then a decode step of 73-80 ms against 26-30 ms around it, once 4 s (a
cache that large reallocated). Every finish beside long prompts put a spike in the other streams'
inter-token times (issue 15's long-prompt target).

``kept_rows`` does it in one gather into a fresh array that the next write updates in place, and
drops shared padding only once it is worth a copy's strided read (``SHIFT_MIN`` positions);
below that the padding stays (attention reads at most that many masked positions more per row).
mlxd's quantized cache (kvcache.py) uses it for each of its parts; ``install`` puts
``filter_batch`` in place of mlx-lm's ``BatchKVCache.filter`` (the class its ``KVCache.merge``
makes, so every batch of plain caches).
"""

from __future__ import annotations

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


def kept_rows(a: mx.array, rows: mx.array, shift: int) -> mx.array:
    """Rows ``rows`` of ``a`` (batch axis first, positions third) without its first ``shift``
    positions, gathered into a new contiguous array."""
    if shift:
        a = a[..., shift:, :]
    return mx.take(a, rows, axis=0)


def filter_batch(cache: BatchKVCache, batch_indices) -> None:
    """``BatchKVCache.filter`` (keep these rows, in this order) in one copy of the cache."""
    rows = mx.array(batch_indices, dtype=mx.int32)
    cache.offset = cache.offset[rows]
    cache.left_padding = cache.left_padding[rows]
    shift = shift_for(cache.left_padding)
    if cache.keys is not None:
        cache.keys = kept_rows(cache.keys, rows, shift)
        cache.values = kept_rows(cache.values, rows, shift)
    if shift:
        cache._idx -= shift
        cache.left_padding = cache.left_padding - shift


_ORIGINAL = BatchKVCache.filter


def install() -> None:
    """Use ``filter_batch`` for every ``BatchKVCache`` in this process (idempotent)."""
    BatchKVCache.filter = filter_batch  # type: ignore[method-assign]


def uninstall() -> None:
    """mlx-lm's own filter again (tests compare the two)."""
    BatchKVCache.filter = _ORIGINAL  # type: ignore[method-assign]
