"""--kv-bits on CUDA: decode attention straight from the quantized cache and its full-precision
tail (kvattention.py, kvcache.py). The kernels need a GPU; here stand-ins compute what each must
(the whole attention; one slice of the positions' running max, sum and weighted values; their
combination) with MLX's own ops from the very arguments the kernels get. That tests everything
around them: the check that guards enabling them, the split and combine plumbing, the cache
writing decode tokens to its tail and quantizing it in one go, filters and extracts keeping the
tail, and a batch's greedy tokens unchanged."""

from __future__ import annotations

import sys

import mlx.core as mx
import pytest
from test_kvcache import _batch, _caches, loaded  # noqa: F401 - the fixture, by name

from mlxd.engine import attention, kvattention, kvcache

LOG2E = 1.4426950408889634
LOW = -3.0e38


def _unpack(inputs, strict: bool = True):
    q, kw, ks, kb, vw, vs, vb, kt, vt, lp, lengths, meta, sc = inputs
    nq, heads, kv_heads, capacity, _tail_capacity, splits = (int(x) for x in meta.tolist())
    assert heads == q.shape[1] and kv_heads == kw.shape[1] and capacity == kw.shape[2]
    ends = lp + lengths  # every row ends at the same position: the batch's length
    n = int(ends.max().item())
    assert bool((ends == n).all().item()) or not strict
    tail = (kt, vt) if n > nq else None
    if kt.ndim != 4:  # no tail: a kernel reading past nq reads codes (planted by the check)
        tail, nq = None, n
    return q, (kw, ks, kb), (vw, vs, vb), tail, lp, n, nq, splits, float(sc.item())


def _grid_ok(q, kw, template, grid, threadgroup, splits):
    t = dict(template)
    per_kv = q.shape[1] // kw.shape[1]
    assert per_kv % t["HB"] == 0 and t["HB"] <= kvattention.MAX_HEADS_PER_BLOCK
    blocks = q.shape[0] * kw.shape[1] * (per_kv // t["HB"]) * splits
    assert grid[0] == blocks * threadgroup[0] and threadgroup[0] == 32 * t["WARPS"]


class Whole:
    """The one-pass kernel: attention over the codes and the tail."""

    strict = True  # the arguments must be consistent (Broken: deliberately not)

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, inputs, template, grid, threadgroup, output_shapes, output_dtypes):
        self.calls += 1
        q, keys, values, tail, lp, n, nq, splits, scale = _unpack(inputs, self.strict)
        assert splits == 1
        _grid_ok(q, keys[0], template, grid, threadgroup, splits)
        t = dict(template)
        out = kvattention.reference(
            q, keys, values, lp, n, scale, t["BITS"], t["G"], tail=tail, nq=nq
        )
        assert list(out.shape) == list(output_shapes[0])
        return [out.astype(output_dtypes[0])]


class Split(Whole):
    """The split kernel: each slice's running max (base 2), sum and weighted values."""

    def __call__(self, inputs, template, grid, threadgroup, output_shapes, output_dtypes):
        self.calls += 1
        q, keys, values, tail, lp, n, nq, splits, scale = _unpack(inputs)
        _grid_ok(q, keys[0], template, grid, threadgroup, splits)
        t = dict(template)
        k = mx.dequantize(*keys, group_size=t["G"], bits=t["BITS"])[..., :nq, :]
        v = mx.dequantize(*values, group_size=t["G"], bits=t["BITS"])[..., :nq, :]
        if tail is not None:
            k = mx.concatenate([k, tail[0][..., : n - nq, :]], axis=2)
            v = mx.concatenate([v, tail[1][..., : n - nq, :]], axis=2)
        B, H = q.shape[:2]
        k = mx.repeat(k.astype(mx.float32), H // k.shape[1], axis=1)
        v = mx.repeat(v.astype(mx.float32), H // v.shape[1], axis=1)
        scores = (q.astype(mx.float32) * scale * LOG2E) @ k.swapaxes(-1, -2)  # (B, H, 1, n)
        first = lp.astype(mx.int32)[:, None]
        span = (n - first + splits - 1) // splits
        lo = first + mx.arange(splits)[None, :] * span
        hi = mx.minimum(lo + span, n)
        position = mx.arange(n)[None, None, :]
        inside = ((position >= lo[..., None]) & (position < hi[..., None]))[:, None]
        scores = mx.broadcast_to(scores, (B, H, splits, n))
        top = mx.max(mx.where(inside, scores, LOW), axis=-1)
        p = mx.where(inside, mx.power(2.0, scores - top[..., None]), 0.0)
        return [p @ v, top, p.sum(-1)]


class Combine(Whole):
    def __call__(self, inputs, template, grid, threadgroup, output_shapes, output_dtypes):
        self.calls += 1
        out, top, total, meta = inputs
        assert int(meta.item()) == out.shape[2]
        f = mx.power(2.0, top - top.max(-1, keepdims=True))
        merged = (out * f[..., None]).sum(-2) / (total * f).sum(-1)[..., None]
        return [merged[:, :, None, :].astype(output_dtypes[0])]


def stand_in() -> kvattention.Kernels:
    return kvattention.Kernels(Whole(), Split(), Combine())


class Broken(Whole):
    """The whole kernel given one wrong argument."""

    strict = False

    def __init__(self, index: int, value) -> None:
        super().__init__()
        self.index, self.value = index, value

    def __call__(self, inputs, **kw):
        inputs = list(inputs)
        inputs[self.index] = self.value(inputs[self.index])
        return super().__call__(inputs, **kw)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(("head_dim", "group"), [(64, 64), (128, 64), (64, 32), (32, 32)])
@pytest.mark.parametrize("per_kv", [1, 3, 4, 16])
def test_the_check_passes_correct_kernels(bits, head_dim, group, per_kv):
    assert kvattention.supported(head_dim, bits, group)
    kernels = stand_in()
    error = kvattention.check(kernels, head_dim, bits, group, mx.float32, per_kv)
    assert error < 1e-5
    assert kernels.whole.calls == 2 and kernels.split.calls == 2 and kernels.combine.calls == 2


def test_splitting_the_positions_changes_nothing_in_bfloat16():
    assert kvattention.check(stand_in(), 128, 8, 64, mx.bfloat16, 4) < 0.01


@pytest.mark.parametrize(
    "broken",
    [
        Broken(9, mx.zeros_like),  # reads the left padding
        Broken(10, lambda n: n + 9),  # reads past the filled length
        Broken(11, lambda m: m + mx.array([9, 0, 0, 0, 0, 0], mx.int32)),  # codes past nq
        Broken(12, lambda s: s * 2),  # a wrong scale
    ],
    ids=["padding", "length", "quantized-length", "scale"],
)
def test_the_check_refuses_a_wrong_kernel(broken):
    kernels = kvattention.Kernels(broken, Split(), Combine())
    assert kvattention.check(kernels, 128, 8, 64, mx.bfloat16, 4) > kvattention.CHECK_TOLERANCE


def test_shapes_the_kernel_does_not_take():
    assert not kvattention.supported(80, 8, 16)  # 80 is not lanes x codes
    assert not kvattention.supported(96, 8, 32)  # 3 dimensions a lane
    assert not kvattention.supported(256, 8, 64)  # 8 dimensions a lane
    assert not kvattention.supported(128, 3, 64)
    assert kvattention.usable(128, 8, 64) is False or mx.cuda.is_available()


def test_blocks_and_splits():
    assert [kvattention.heads_per_block(n) for n in (1, 3, 4, 7, 8, 16, 12)] == [
        1,
        3,
        4,
        7,
        8,
        8,
        6,
    ]
    assert kvattention.splits_for(10_000, 4000) == 1  # the GPU is full already
    assert kvattention.splits_for(8, 10) == 1  # too few positions to share out
    one = kvattention.splits_for(8, 4000)
    assert 1 < one <= kvattention.MAX_SPLITS and one & (one - 1) == 0


def test_nothing_is_used_unless_allowed(monkeypatch):
    monkeypatch.setattr(mx.cuda, "is_available", lambda: True)
    kvattention.allow(False)
    assert not kvattention.usable(128, 8, 64)
    kvattention.allow()
    try:
        assert kvattention.usable(128, 8, 64)
        assert not kvattention.usable(80, 8, 16)
    finally:
        kvattention.allow(False)


@pytest.fixture
def fused(loaded, monkeypatch):  # noqa: F811 - the fixture imported above
    """The tiny model's attention routed as on CUDA, the stand-ins compiled and checked."""
    model, _ = loaded
    for name in {type(m).__module__ for _, m in model.named_modules()}:
        module = sys.modules[name]
        if getattr(module, "scaled_dot_product_attention", None) is attention._ORIGINAL:
            monkeypatch.setattr(module, "scaled_dot_product_attention", attention._prefill_aware)
    kernels = stand_in()
    monkeypatch.setattr(kvattention, "_build", lambda: kernels)
    monkeypatch.setattr(mx.cuda, "is_available", lambda: True)
    kvattention.allow()
    yield kernels
    kvattention.allow(False)


def _decode_calls(kernels) -> int:
    return kernels.whole.calls + kernels.split.calls


def _plain(kernels, q, keys, values, lp, lengths, n, scale, bits, group, tail=None, nq=None):
    return kvattention.reference(q, keys, values, lp, n, scale, bits, group, tail=tail, nq=nq)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("tail", [1, 3, 32])
def test_a_batch_reading_codes_and_tail_matches_the_same_attention_in_plain_ops(
    loaded,  # noqa: F811
    fused,
    monkeypatch,
    tail,
    split,
):
    """Greedy tokens of a padded batch with finishes and filters, the kernels' arguments made
    from the cache (lengths from its offset, the tail, nq) against ``reference`` given the
    cache's own buffers."""
    model, _ = loaded
    monkeypatch.setattr(kvcache, "TAIL", tail)
    if split:  # few positions a warp: the tiny batch's steps split
        monkeypatch.setattr(kvattention, "WARPS", 1)
        monkeypatch.setattr(kvattention, "MIN_PAIRS", 1)
    got = _batch(model, _caches(model, 8, 0, dequantize=True), max_tokens=20)
    assert (fused.split.calls > 2) == split and fused.whole.calls + fused.split.calls > 4
    monkeypatch.setattr(kvattention, "attend", _plain)
    assert _batch(model, _caches(model, 8, 0, dequantize=True), max_tokens=20) == got


def test_a_failed_check_falls_back_and_caches_stop_reading_codes(loaded, fused, monkeypatch):  # noqa: F811
    model, _ = loaded
    monkeypatch.setattr(kvattention, "enable", lambda *a: False)
    cache = _caches(model, 8, 0, dequantize=True)()
    model(mx.array([[5, 6, 7, 8, 9]]), cache=cache)
    model(mx.array([[10]]), cache=cache)  # the step that found out: plain ops, tail and all
    assert not kvattention.usable(cache[0].dims[1], 8, cache[0].group_size)
    model(mx.array([[11]]), cache=cache)  # later steps: the dequantizing path, no tail
    assert cache[0].tail() is None and cache[0].size() == 7
    assert _decode_calls(fused) == 0


def test_prefill_dequantizes_and_decode_reads_the_codes(loaded, fused):  # noqa: F811
    model, _ = loaded
    cache = _caches(model, 8, 0, dequantize=True)()
    model(mx.array([[5, 6, 7, 8, 9]]), cache=cache)  # five positions at once
    assert _decode_calls(fused) == 0 and cache[0].tail() is None
    model(mx.array([[10]]), cache=cache)
    assert _decode_calls(fused) == 4 + len(cache)  # the check (4 launches), then every layer
    assert cache[0]._tail == 1 and cache[0].size() == 6


# ----- the tail's bookkeeping, against what each row was given -----

HEADS, WIDTH = 2, 64


def _content(cache, row: int) -> mx.array:
    """Row ``row``'s keys as attention sees them: the dequantized codes, then the tail."""
    nq = cache._idx - cache._tail
    keys = mx.dequantize(*cache.keys, group_size=cache.group_size, bits=cache.kv_bits)
    seen = keys[row, :, :nq]
    tail = cache.tail()
    if tail is not None:
        seen = mx.concatenate([seen, tail[0][row, :, : cache._tail].astype(seen.dtype)], axis=1)
    pad = int(cache.left_padding[row].item())
    return seen[:, pad:]


def _expected(given: list[mx.array], quantized: int, group: int) -> mx.array:
    """The tokens a row was given: the first ``quantized`` of them through 8 bits."""
    x = mx.stack(given, axis=1)  # (heads, tokens, width)
    rounded = mx.dequantize(*mx.quantize(x, group_size=group, bits=8), group_size=group, bits=8)
    return mx.concatenate([rounded[:, :quantized], x[:, quantized:]], axis=1)


def test_tail_bookkeeping_through_flushes_filters_extracts_extends_and_trims(monkeypatch):
    monkeypatch.setattr(kvcache, "TAIL", 4)
    monkeypatch.setattr(kvattention, "usable", lambda *a: True)
    mx.random.seed(3)
    rows = 3
    cache = kvcache.QuantizedBatchKVCache([0, 2, 1], 8, 0, dequantize=True)
    prompt = mx.random.normal((rows, HEADS, 6, WIDTH))
    cache.update_and_fetch(prompt, prompt)
    given = {r: [prompt[r, :, i] for i in range(6)] for r in range(rows)}
    pads = {0: 0, 1: 2, 2: 1}
    given = {r: g[pads[r] :] for r, g in given.items()}
    live = [0, 1, 2]

    def step():
        new = mx.random.normal((len(live), HEADS, 1, WIDTH))
        keys, _ = cache.update_and_fetch(new, new)
        assert isinstance(keys, tuple)  # handed over as stored
        for i, r in enumerate(live):
            given[r].append(new[i, :, 0])

    def agrees():
        nq = cache._idx - cache._tail
        for i, r in enumerate(live):
            pad = int(cache.left_padding[i].item())
            want = _expected(given[r], nq - pad, cache.group_size)
            assert mx.array_equal(_content(cache, i), want), (r, nq, cache._tail)

    for _ in range(6):  # a flush at 4, then two in the tail
        step()
    assert cache._tail == 2 and cache.size() == 12
    agrees()

    cache.filter([0, 2])  # row 1 leaves with two tokens in the tail
    live = [0, 2]
    assert cache._tail == 2
    agrees()

    one = cache.extract(1)  # row 2 alone, tail and all
    assert one._tail == 2 and one.size() == 12 - 1
    saved, live = live, [2]
    cache_, cache = cache, one
    agrees()
    cache, live = cache_, saved

    step()
    other = kvcache.QuantizedBatchKVCache([0], 8, 0, dequantize=True)
    late = mx.random.normal((1, HEADS, 3, WIDTH))
    other.update_and_fetch(late, late)
    cache.extend(other)  # joins after a flush: one representation
    given[3] = [late[0, :, i] for i in range(3)]
    live = [0, 2, 3]
    assert cache._tail == 0
    agrees()

    for _ in range(5):
        step()
    agrees()
    dropped = cache.trim(2)
    assert dropped == 2 and cache._tail == 0
    for r in live:
        given[r] = given[r][:-2]
    agrees()
    assert cache.nbytes > 0
