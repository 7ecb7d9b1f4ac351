"""Tensor parallel's float32 sums: a bf16 projection split over two emulated ranks and summed the
new way gives what the unsplit projection gives; MLX's own way (partial products rounded to bf16,
then summed in bf16) does not."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.nn.layers.distributed import shard_linear

from mlxd.models import widesum

from group import FakeHandle

IN, OUT, ROWS = 2048, 256, 16  # a projection's shape: the input is what the ranks split


def two_ranks(layer: nn.Module, x: mx.array, wide: bool, monkeypatch) -> mx.array:
    """What rank 0 computes when ``layer`` is row-sharded over two ranks: each rank's partial
    product is taken (all_sum as a no-op that records it), then all_sum is their sum."""
    shards = [shard_linear(layer, "sharded-to-all", group=FakeHandle(r, 2)) for r in (0, 1)]
    if wide:
        assert all(widesum.widen(nn.Sequential(s)) == 1 for s in shards)
    halves = mx.split(x, 2, axis=-1)
    partials: list[mx.array] = []
    monkeypatch.setattr(mx.distributed, "all_sum", lambda p, **_: partials.append(p) or p)
    for s, h in zip(shards, halves, strict=True):
        s(h)
    assert all(p.dtype == (mx.float32 if wide else mx.bfloat16) for p in partials)
    monkeypatch.setattr(mx.distributed, "all_sum", lambda p, **_: partials[0] + partials[1])
    return shards[0](halves[0])


def bf16(layer: nn.Module) -> nn.Module:
    layer.set_dtype(mx.bfloat16)
    return layer


def linear(quantized: bool, bias: bool) -> nn.Module:
    mx.random.seed(7)
    layer = bf16(nn.Linear(IN, OUT, bias=bias))
    return nn.QuantizedLinear.from_linear(layer) if quantized else layer


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_float32_sums_give_the_unsplit_output(quantized, bias, monkeypatch):
    layer = linear(quantized, bias)
    x = mx.random.normal((ROWS, IN), key=mx.random.key(3)).astype(mx.bfloat16)
    # One device accumulating in float32 and rounding once, as a GPU's matmuls do (MLX's CPU
    # quantized matmul on bf16 accumulates in bf16, so the CPU's own output is no reference).
    want = layer(x.astype(mx.float32)).astype(mx.bfloat16)
    new = two_ranks(layer, x, True, monkeypatch)
    old = two_ranks(layer, x, False, monkeypatch)
    assert new.dtype == old.dtype == want.dtype == mx.bfloat16
    new_off = (new != want).sum().item()
    old_off = (old != want).sum().item()
    # MLX's way misses many outputs by a bf16 ulp or more; float32 sums differ from the unsplit
    # projection only in float32's summation order, which a bf16 rounding almost always hides.
    assert old_off > 0.05 * want.size
    assert new_off <= max(2, old_off // 20)
    assert mx.abs(new.astype(mx.float32) - want.astype(mx.float32)).max().item() <= (
        mx.abs(old.astype(mx.float32) - want.astype(mx.float32)).max().item()
    )


def test_float32_input_stays_float32(monkeypatch):
    mx.random.seed(7)
    layer = nn.Linear(IN, OUT)
    x = mx.random.normal((ROWS, IN), key=mx.random.key(3))
    got = two_ranks(layer, x, True, monkeypatch)
    assert got.dtype == mx.float32
    assert mx.allclose(got, layer(x), atol=1e-4).item()


def test_only_the_row_sharded_projections_widen():
    mx.random.seed(7)
    group = FakeHandle(0, 2)
    block = nn.Sequential(
        shard_linear(nn.Linear(8, 8), "all-to-sharded", group=group),
        shard_linear(bf16(nn.Linear(8, 8)), "sharded-to-all", group=group),
        shard_linear(nn.QuantizedLinear(128, 8), "sharded-to-all", group=group),
    )
    assert widesum.widen(block) == 2
    assert type(block.layers[0]) is nn.AllToShardedLinear
    assert type(block.layers[1]) is widesum.WideShardedToAllLinear
    assert type(block.layers[2]) is widesum.WideQuantizedShardedToAllLinear
    assert block.layers[1].weight.dtype == mx.float32  # dense: kept wide, not cast per call
    assert widesum.widen(block) == 0  # already wide
