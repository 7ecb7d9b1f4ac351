"""--kv-bits on CUDA: decode attention straight from the quantized cache (kvattention.py). The
kernel itself needs a GPU; here a stand-in computes what it must (dequantize, mask the padding,
attend) from the very arguments the kernel gets, which tests everything around it: the check
that guards enabling it, the cache handing over its buffers for one-token steps only, attention
routing them, and a batch's greedy tokens (padding, finishes, filters) unchanged."""

from __future__ import annotations

import sys

import mlx.core as mx
import pytest
from test_kvcache import _batch, _caches, loaded  # noqa: F401 - the fixture, by name

from mlxd.engine import attention, kvattention


class StandIn:
    """``mx.fast.cuda_kernel``'s call, computing the kernel's result with MLX's own ops from
    the kernel's inputs (so a wrong argument order, length or padding shows)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, inputs, template, grid, threadgroup, output_shapes, output_dtypes):
        self.calls += 1
        q, kw, ks, kb, vw, vs, vb, lp, meta, sc = inputs
        t = dict(template)
        assert grid[0] == q.shape[0] * q.shape[1] * threadgroup[0]  # a block per row and head
        assert meta[1].item() == q.shape[1] and meta[3].item() == kw.shape[2]
        n = int(meta[0].item())
        out = kvattention.reference(
            q, (kw, ks, kb), (vw, vs, vb), lp, n, sc.item(), t["BITS"], t["G"]
        )
        assert list(out.shape) == list(output_shapes[0])
        return [out.astype(output_dtypes[0])]


class Broken(StandIn):
    def __init__(self, index: int, value) -> None:
        super().__init__()
        self.index, self.value = index, value

    def __call__(self, inputs, **kw):
        inputs = list(inputs)
        inputs[self.index] = self.value(inputs[self.index])
        return super().__call__(inputs, **kw)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(("head_dim", "group"), [(64, 64), (128, 64), (64, 32), (32, 32)])
def test_the_check_passes_a_correct_kernel(bits, head_dim, group):
    assert kvattention.supported(head_dim, bits, group)
    assert kvattention.check(StandIn(), head_dim, bits, group, mx.bfloat16) == 0.0


@pytest.mark.parametrize(
    "broken",
    [
        Broken(7, mx.zeros_like),  # reads the left padding
        Broken(8, lambda m: m + mx.array([9, 0, 0, 0], mx.int32)),  # reads past the filled length
        Broken(9, lambda s: s * 2),  # a wrong scale
    ],
    ids=["padding", "length", "scale"],
)
def test_the_check_refuses_a_wrong_kernel(broken):
    assert kvattention.check(broken, 128, 8, 64, mx.bfloat16) > kvattention.CHECK_TOLERANCE


def test_shapes_the_kernel_does_not_take():
    assert not kvattention.supported(80, 8, 16)  # 80 is not lanes x codes
    assert not kvattention.supported(96, 8, 32)  # 3 dimensions a lane straddle groups of 32
    assert not kvattention.supported(256, 8, 64)  # 8 dimensions a lane
    assert not kvattention.supported(128, 3, 64)
    assert not kvattention.enable(128, 8, 64, mx.bfloat16) or mx.cuda.is_available()


def test_nothing_is_tried_unless_allowed(monkeypatch):
    tried = []
    monkeypatch.setattr(kvattention, "enable", lambda *a: tried.append(a) or False)
    kvattention.allow(False)
    assert not kvattention.ready(128, 8, 64, mx.bfloat16) and not tried
    kvattention.allow()
    try:
        assert not kvattention.ready(128, 8, 64, mx.bfloat16)
        assert not kvattention.ready(128, 8, 64, mx.bfloat16)  # refused once, kept
        assert len(tried) == 1
    finally:
        kvattention.allow(False)


@pytest.fixture
def fused(loaded, monkeypatch):  # noqa: F811 - the fixture imported above
    """The tiny model's attention routed as on CUDA, the stand-in enabled as the kernel."""
    model, _ = loaded
    for name in {type(m).__module__ for _, m in model.named_modules()}:
        module = sys.modules[name]
        if getattr(module, "scaled_dot_product_attention", None) is attention._ORIGINAL:
            monkeypatch.setattr(module, "scaled_dot_product_attention", attention._prefill_aware)
    kernel = StandIn()

    def enable(head_dim, bits, group_size, dtype):  # what the CUDA build does once it checked
        kvattention._kernel = kernel
        return True

    monkeypatch.setattr(kvattention, "enable", enable)
    monkeypatch.setattr(kvattention, "MIN_ROWS", 1)  # the tiny batches count
    kvattention.allow()
    yield kernel
    kvattention.allow(False)


def test_a_batch_reading_the_codes_keeps_its_greedy_tokens(loaded, fused):  # noqa: F811
    model, _ = loaded
    dequantizing = _caches(model, 8, 0, dequantize=True)
    kvattention.allow(False)  # as where attention is not routed: the caches dequantize
    want = _batch(model, dequantizing)
    assert fused.calls == 0
    kvattention.allow()
    assert _batch(model, dequantizing) == want
    assert fused.calls > 0  # the decode steps went through the kernel's arguments


def test_prefill_still_dequantizes(loaded, fused):  # noqa: F811
    model, _ = loaded
    cache = _caches(model, 8, 0, dequantize=True)()
    model(mx.array([[5, 6, 7, 8, 9]]), cache=cache)  # five positions at once
    assert fused.calls == 0
    model(mx.array([[10]]), cache=cache)
    assert fused.calls == len(cache)  # one decode step: every layer


def test_a_small_batch_keeps_dequantizing(loaded, fused, monkeypatch):  # noqa: F811
    model, _ = loaded
    monkeypatch.setattr(kvattention, "MIN_ROWS", 2)  # one sequence x one KV head: below
    cache = _caches(model, 8, 0, dequantize=True)()
    model(mx.array([[5, 6, 7, 8, 9]]), cache=cache)
    model(mx.array([[10]]), cache=cache)
    assert fused.calls == 0
