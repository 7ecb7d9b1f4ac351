"""rowfilter.filter_batch keeps what mlx-lm's BatchKVCache.filter keeps, in one copy."""

from __future__ import annotations

import copy

import mlx.core as mx
import pytest
from mlx_lm.models.cache import BatchKVCache

from mlxd.engine import rowfilter

H, D = 2, 8


def _cache(lengths: list[int], seed: int = 0) -> BatchKVCache:
    """A batch cache of rows with these prompt lengths (left-padded), then 3 decode steps."""
    mx.random.seed(seed)
    longest = max(lengths)
    cache = BatchKVCache([longest - n for n in lengths])
    B = len(lengths)
    cache.update_and_fetch(
        mx.random.normal((B, H, longest, D)), mx.random.normal((B, H, longest, D))
    )
    for _ in range(3):
        cache.update_and_fetch(mx.random.normal((B, H, 1, D)), mx.random.normal((B, H, 1, D)))
    return cache


def _rows(cache: BatchKVCache) -> list[tuple[mx.array, mx.array]]:
    """Each row's real tokens (keys, values), padding left out."""
    keys, values = cache.keys_and_values()
    pads: list = cache.left_padding.tolist()  # type: ignore[assignment]
    return [(keys[i, :, p:], values[i, :, p:]) for i, p in enumerate(pads)]


def _attend(cache: BatchKVCache, k: mx.array, v: mx.array, q: mx.array) -> mx.array:
    """One decode step as a model runs it: the mask, the cache write, attention."""
    mask = cache.make_mask(1, return_array=True)
    keys, values = cache.update_and_fetch(k, v)
    return mx.fast.scaled_dot_product_attention(q, keys, values, scale=D**-0.5, mask=mask)


@pytest.mark.parametrize(
    ("lengths", "keep"),
    [
        ([5, 9, 7, 3], [0, 2, 3]),  # a middle row goes, small padding stays
        ([5, 9, 7, 3], [3, 0]),  # reordered, as GenerationBatch may ask
        ([300, 20, 600, 40], [1, 3]),  # the long rows go: 560+ shared positions dropped
    ],
)
def test_same_rows_as_mlx_lm(lengths, keep):
    ours, theirs = _cache(lengths), _cache(lengths)
    rowfilter.filter_batch(ours, keep)
    rowfilter._ORIGINAL(theirs, keep)  # mlx-lm's own
    assert ours.offset.tolist() == theirs.offset.tolist()
    for (k1, v1), (k2, v2) in zip(_rows(ours), _rows(theirs), strict=True):
        assert mx.array_equal(k1, k2) and mx.array_equal(v1, v2)
    # Both keep serving: one more token each, and attention over them agrees.
    B = len(keep)
    new_k, new_v, q = (mx.random.normal((B, H, 1, D)) for _ in range(3))
    ours_out = _attend(ours, new_k, new_v, q)
    assert mx.allclose(ours_out, _attend(theirs, new_k, new_v, q), atol=1e-5)


def test_shared_padding_dropped_only_when_long():
    short = _cache([5, 9, 7])
    rowfilter.filter_batch(short, [0, 2])  # 2 positions shared: kept
    assert short.left_padding.tolist() == [4, 2]
    long = _cache([300, 20, 600, 40])
    idx_before = long._idx
    rowfilter.filter_batch(long, [1, 3])
    assert idx_before - long._idx == 560  # the rows of 20 and 40 tokens shared 560 of padding
    assert long.left_padding.tolist() == [20, 0]


def test_install_swaps_the_method():
    try:
        rowfilter.install()
        assert BatchKVCache.filter is rowfilter.filter_batch
        rowfilter.install()  # twice is once
        assert BatchKVCache.filter is rowfilter.filter_batch
    finally:
        rowfilter.uninstall()
    assert BatchKVCache.filter is rowfilter._ORIGINAL


def test_copy_of_a_filtered_cache_is_independent():
    cache = _cache([5, 9, 7])
    rowfilter.filter_batch(cache, [2, 0])
    twin = copy.deepcopy(cache)
    cache.update_and_fetch(mx.ones((2, H, 1, D)), mx.ones((2, H, 1, D)))
    assert twin._idx == cache._idx - 1
