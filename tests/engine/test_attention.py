"""The plain prefill attention used on CUDA computes what MLX's fused kernel does."""

from __future__ import annotations

import mlx.core as mx
import pytest

from mlxd.engine import attention


def _qkv(B, H, Hkv, L, S, D=16, seed=0):
    k = mx.random.split(mx.random.key(seed), 3)
    return (
        mx.random.normal((B, H, L, D), key=k[0]),
        mx.random.normal((B, Hkv, S, D), key=k[1]),
        mx.random.normal((B, Hkv, S, D), key=k[2]),
    )


@pytest.mark.parametrize(
    "B, H, Hkv, L, S", [(1, 4, 4, 5, 5), (3, 8, 2, 7, 7), (2, 8, 2, 4, 11), (1, 6, 1, 9, 20)]
)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "bool-per-head", "additive"])
def test_matches_the_fused_kernel(B, H, Hkv, L, S, mask_kind):
    q, k, v = _qkv(B, H, Hkv, L, S)
    if mask_kind == "none":
        mask = None
    elif mask_kind == "causal":
        mask = "causal"
    else:
        pad = mx.array([i % 3 for i in range(B)])[:, None, None, None]
        rows = mx.arange(S - L, S)[None, None, :, None]
        cols = mx.arange(S)[None, None, None, :]
        mask = (cols <= rows) & (cols >= pad)  # left padding, causal
        if mask_kind == "bool-per-head":
            mask = mx.broadcast_to(mask, (B, H, L, S))
        if mask_kind == "additive":
            mask = mx.where(mask, 0.0, -1e9).astype(mx.float32)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask=mask)
    got = attention.plain_attention(q, k, v, 0.25, mask)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert not mx.isnan(got).any().item()
    if not isinstance(mask, mx.array) or mask.dtype != mx.bool_:
        assert mx.allclose(got, want, atol=1e-4, rtol=1e-4).item()
    else:  # rows with nothing to attend to (padding) are garbage either way: compare the rest
        live = mx.broadcast_to(mask.any(axis=-1, keepdims=True), got.shape)
        assert mx.allclose(
            mx.where(live, got, 0), mx.where(live, want, 0), atol=1e-4, rtol=1e-4
        ).item()


def test_bfloat16_inputs_stay_bfloat16():
    q, k, v = (x.astype(mx.bfloat16) for x in _qkv(2, 4, 2, 6, 6))
    got = attention.plain_attention(q, k, v, 0.25, "causal")
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.25, mask="causal")
    assert got.dtype == mx.bfloat16
    assert mx.allclose(got.astype(mx.float32), want.astype(mx.float32), atol=2e-2).item()


def test_installed_model_gives_the_same_logits(tiny_model_dir, monkeypatch):
    """Patched into a real model: batched, padded prefill and decode logits are unchanged."""
    from mlx_lm import load
    from mlx_lm.models import base
    from mlx_lm.models.cache import BatchKVCache

    model, _ = load(str(tiny_model_dir))
    tokens = mx.array([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])

    def run():
        cache = [BatchKVCache([0, 2]) for _ in model.layers]
        prefill = model(tokens, cache=cache)
        decode = model(mx.array([[3], [4]]), cache=cache)
        return prefill, decode

    want = run()
    module = __import__(type(model).__module__, fromlist=["x"])
    monkeypatch.setattr(module, "scaled_dot_product_attention", base.scaled_dot_product_attention)
    assert attention.install(model) >= 1
    assert module.scaled_dot_product_attention is attention._prefill_aware
    got = run()
    for g, w in zip(got, want, strict=True):
        assert mx.allclose(g, w, atol=1e-4, rtol=1e-4).item()
