"""--kv-bits: the quantized KV cache inside mlx-lm's batch, alone, from the prompt cache, and in
the engine's memory admission."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm.generate import BatchGenerator
from test_batching import Run

from mlxd.engine.kvcache import QuantizedBatchKVCache, group_size_for, quantized_fraction
from mlxd.engine.loop import Engine, EngineSettings

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [40, 41, 42], [9] * 13, [200, 201, 202, 203, 17]]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Heads of 32 (the tiny default of 16 is below mlx's smallest quantization group)."""
    from mlx_lm import load

    from tinymodel import build_tiny_model

    path = tmp_path_factory.mktemp("kv") / "tiny-kv"
    return load(str(build_tiny_model(path, num_attention_heads=2, num_key_value_heads=1)))


def _batch(model, new_cache, max_tokens=12):
    """Greedy tokens of PROMPTS generated together (mixed lengths: padding, finalize, filter
    as sequences end at different times)."""
    gen = BatchGenerator(model, stop_tokens=[], prefill_step_size=4)
    caches = None if new_cache is None else [new_cache() for _ in PROMPTS]
    uids = gen.insert(
        PROMPTS, max_tokens=[max_tokens - i for i in range(len(PROMPTS))], caches=caches
    )
    out: dict[int, list[int]] = {u: [] for u in uids}
    left = set(uids)
    while left:
        for r in gen.next()[1]:
            out[r.uid].append(r.token)
            if r.finish_reason:
                left.discard(r.uid)
    return [out[u] for u in uids]


def _caches(model, bits, start, dequantize=False):
    return lambda: [
        QuantizedBatchKVCache([0], bits, start, dequantize=dequantize) for _ in model.layers
    ]


def test_full_precision_mode_matches_mlx_lm_exactly(loaded):
    model, _ = loaded
    assert _batch(model, _caches(model, 8, start=10**6)) == _batch(model, None)


@pytest.mark.parametrize("start", [0, 8])
def test_8_bit_keeps_greedy_tokens_on_the_tiny_model(loaded, start):
    model, _ = loaded
    assert _batch(model, _caches(model, 8, start)) == _batch(model, None)


def test_dequantized_attention_matches_too(loaded):
    """CUDA's way: quantized at rest, dequantized for the usual attention kernel."""
    model, _ = loaded
    cache = _caches(model, 8, 0, dequantize=True)()
    model(mx.array([[5, 6, 7, 8]]), cache=cache)
    assert cache[0].keys[0].dtype == mx.uint32 and not hasattr(cache[0], "bits")
    assert _batch(model, _caches(model, 8, 0, dequantize=True)) == _batch(model, None)


def test_quantizes_once_it_holds_start_tokens(loaded):
    model, _ = loaded
    cache = [QuantizedBatchKVCache([0], 8, start=6) for _ in model.layers]
    model(mx.array([[5, 6, 7, 8]]), cache=cache)
    assert not hasattr(cache[0], "bits") and cache[0].keys[0].dtype != mx.uint32
    model(mx.array([[9, 10, 11]]), cache=cache)  # held 4 < 6 before this step: still full
    assert not hasattr(cache[0], "bits")
    model(mx.array([[12]]), cache=cache)  # held 7 >= 6: quantized from here on
    assert cache[0].bits == 8 and cache[0].keys[0].dtype == mx.uint32 and cache[0].size() == 8


def test_extract_merge_and_extend_round_trip(loaded):
    model, _ = loaded
    a = [QuantizedBatchKVCache([0], 4) for _ in model.layers]
    b = [QuantizedBatchKVCache([0], 4) for _ in model.layers]
    model(mx.array([[5, 6, 7, 8, 9]]), cache=a)
    model(mx.array([[40, 41]]), cache=b)
    merged = QuantizedBatchKVCache.merge([a[0], b[0]])
    assert merged.left_padding.tolist() == [0, 3] and merged.size() == 5
    back = merged.extract(1)
    assert back.size() == 2 and back.left_padding.tolist() == [0]
    for x, y in zip(back.keys + back.values, b[0].keys + b[0].values, strict=True):
        assert mx.array_equal(x, y[..., :2, :]).item()
    merged.extend(QuantizedBatchKVCache.merge([a[0]]))
    assert merged.offset.shape == (3,) and merged.size() == 5
    merged.filter([2])
    assert merged.size() == 5 and merged.left_padding.tolist() == [0]
    assert merged.trim(2) == 2 and merged.size() == 3


def test_a_fresh_prefill_attends_to_its_chunk_as_computed():
    """CUDA's way, first chunk of an empty cache: attention gets the keys and values it gave
    (exact, no dequantize of the buffers just written); later chunks read the buffers."""
    cache = QuantizedBatchKVCache([0, 2], 8, dequantize=True)
    k, v = mx.random.normal((2, 1, 5, 32)), mx.random.normal((2, 1, 5, 32))
    got_k, got_v = cache.update_and_fetch(k, v)
    assert got_k is k and got_v is v and cache.keys[0].dtype == mx.uint32
    more_k, more_v = cache.update_and_fetch(k[..., :3, :], v[..., :3, :])
    assert more_k.shape == (2, 1, 8, 32) and more_v.dtype == v.dtype
    # the first five positions come back dequantized: close to what was given, not the same
    assert mx.allclose(more_k[..., :5, :], k, atol=0.05).item()
    assert not mx.array_equal(more_k[..., :5, :], k).item()


def test_merge_writes_each_row_where_its_tokens_end(loaded):
    model, _ = loaded
    caches = [[QuantizedBatchKVCache([0], 8) for _ in model.layers] for _ in range(3)]
    model(mx.array([[5, 6, 7, 8, 9, 10]]), cache=caches[0])
    model(mx.array([[40, 41]]), cache=caches[1])  # caches[2] stays empty
    merged = QuantizedBatchKVCache.merge([c[0] for c in caches])
    assert merged.left_padding.tolist() == [0, 4, 6] and merged.keys[0].shape[2] == 256
    for row, (c, n) in enumerate(zip(caches[:2], (6, 2), strict=True)):
        for got, want in zip(merged.keys + merged.values, c[0].keys + c[0].values, strict=True):
            assert mx.array_equal(got[row, :, 6 - n : 6], want[0, :, :n]).item()
            assert not got[row, :, : 6 - n].any().item()  # padding stays zero
    assert not merged.keys[0][2].any().item()


def test_filter_keeping_every_row_copies_nothing(loaded):
    from mlx_lm.models.cache import BatchKVCache

    from mlxd.engine import rowfilter

    model, _ = loaded
    a = [QuantizedBatchKVCache([0], 8) for _ in model.layers]
    model(mx.array([[5, 6, 7]]), cache=a)
    merged = QuantizedBatchKVCache.merge([a[0], a[0]])
    before = merged.keys + merged.values
    merged.filter([0, 1])
    assert all(x is y for x, y in zip(merged.keys + merged.values, before, strict=True))
    merged.filter([1, 0])  # a new order is a copy
    assert all(x is not y for x, y in zip(merged.keys + merged.values, before, strict=True))
    plain = BatchKVCache([0, 1])
    plain.update_and_fetch(mx.zeros((2, 1, 3, 32)), mx.zeros((2, 1, 3, 32)))
    keys = plain.keys
    rowfilter.filter_batch(plain, [0, 1])
    assert plain.keys is keys


def test_group_size_follows_the_head():
    assert group_size_for(128) == 64 and group_size_for(32) == 32
    with pytest.raises(ValueError, match="multiple of 32"):
        group_size_for(16)
    assert quantized_fraction(8, 2) == pytest.approx(0.53125)  # bf16 keys, groups of 64
    assert quantized_fraction(4, 2) == pytest.approx(0.28125)


def test_engine_with_8_bit_kv_agrees_and_admits_the_smaller_cache(loaded):
    model, tokenizer = loaded
    results, engines = {}, {}
    for bits in (None, 8):
        eng = Engine(model, tokenizer, EngineSettings(kv_bits=bits, prompt_cache_bytes=0))
        eng.start()
        try:
            assert eng.ready.wait(60)
            runs = [Run(eng, p, max_tokens=16) for p in PROMPTS]  # batched
            solo = Run(eng, PROMPTS[0] * 3, max_tokens=16).result()["text"][0]  # alone
            results[bits] = ([r.result()["text"][0] for r in runs], solo)
            engines[bits] = eng
        finally:
            eng.shutdown(5)
    assert results[8] == results[None]
    full, quant = engines[None], engines[8]
    assert quant.kv_bytes_per_token <= full.kv_bytes_per_token * 0.55  # about halved, or less
    assert quant.kv_bytes(1000) == 1000 * quant.kv_bytes_per_token  # the CPU: no tail
    quant._kv_tail = True  # CUDA's decode reads codes and keeps the latest tokens in full
    assert quant.kv_bytes(1000) == 1000 * quant.kv_bytes_per_token + 32 * full.kv_bytes_per_token


def test_quantized_start_counts_full_precision_first(loaded):
    model, tokenizer = loaded
    eng = Engine(model, tokenizer, EngineSettings(kv_bits=4, quantized_kv_start=100))
    eng.start()
    try:
        assert eng.ready.wait(60)
        full = eng._kv_full_bytes_per_token
        assert eng.kv_bytes(60) == 60 * full
        assert eng.kv_bytes(300) == 100 * full + 200 * eng.kv_bytes_per_token
        # the prompt cache hands a quantized cache back to a later prompt
        first = Run(eng, PROMPTS[2] * 10, max_tokens=4).result()
        again = Run(eng, PROMPTS[2] * 10, max_tokens=4).result()
        assert again["finished"][0].cached_tokens > 0 and again["text"] == first["text"]
    finally:
        eng.shutdown(5)
