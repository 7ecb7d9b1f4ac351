"""Prefill attention without per-shape set-up, for CUDA.

MLX's CUDA backend runs a multi-token ``scaled_dot_product_attention`` through cuDNN, which
builds (and for an array mask, runtime-compiles) a graph for every new (batch, query length, key
length). Measured on an H100 with MLX 0.32.4: 65 ms for each new lone-prompt shape, about 1.2 s
for each new padded batch shape (then 0.2-0.5 ms once cached). Prompt lengths differ from request
to request, so a batched prefill met a new shape nearly every time: 8 streams of an 8B model took
1.5 s per round when the longest prompt's length repeated and 2.6-3 s when it did not.

Prefill attention is a small part of a prefill's work at chat lengths, so on CUDA mlxd computes
it with plain matmul and softmax (no per-shape plans) while the scores fit ``MAX_SCORE_BYTES``;
longer prefills, decode steps (one query: MLX's own vector kernel, no cuDNN), quantized KV caches
and attention sinks keep mlx-lm's path, except a decode step over a quantized cache that hands
over its buffers as stored (kvattention: CUDA, --kv-bits).
``install`` patches the name the model's modules call.
"""

from __future__ import annotations

import logging
import sys

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import base

from mlxd.engine import kvattention
from mlxd.models.device import device_kind

log = logging.getLogger(__name__)

MAX_SCORE_BYTES = 1 << 30  # float32 scores of one prefill step, all heads and sequences


def plain_attention(
    queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask
) -> mx.array:
    """What ``mx.fast.scaled_dot_product_attention`` computes, in plain ops: queries (B, H, L,
    D), keys and values (B, Hkv, S, D) with H a multiple of Hkv; mask None, "causal" (the L
    queries are the last L of the S positions), a boolean array (True attends) or an additive
    one, broadcastable to (B, H, L, S)."""
    B, H, L, D = queries.shape
    kv_heads, S = keys.shape[1], keys.shape[2]
    groups = H // kv_heads
    q = (queries.astype(mx.float32) * scale).reshape(B, kv_heads, groups, L, D)
    scores = q @ keys[:, :, None].astype(mx.float32).swapaxes(-1, -2)  # (B, Hkv, G, L, S)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown mask {mask!r}")
        rows = mx.arange(S - L, S)[:, None]
        mask = mx.arange(S)[None, :] <= rows
    if mask is not None:
        if mask.ndim == 4:  # (B|1, H|1, L|1, S): add the G axis
            b, h, q_len, s = mask.shape
            mask = (
                mask.reshape(b, kv_heads, groups, q_len, s)
                if h == H and groups > 1
                else mask[:, :, None]
            )
        elif mask.ndim == 3:  # (B, L, S)
            mask = mask[:, None, None]
        if mask.dtype == mx.bool_:
            # Finite, so a row with nothing to attend to (a padding position) averages instead
            # of turning into NaN, which would reach the KV cache and, times a zero weight, every
            # later token.
            scores = mx.where(mask, scores, mx.array(mx.finfo(mx.float32).min, mx.float32))
        else:
            scores = scores + mask.astype(mx.float32)
    weights = mx.softmax(scores, axis=-1).astype(values.dtype)
    out = weights @ values[:, :, None]  # (B, Hkv, G, L, D)
    return out.reshape(B, H, L, values.shape[-1])


def _prefill_aware(queries, keys, values, cache, scale: float, mask, sinks=None):
    B, H, L, _ = queries.shape
    if isinstance(keys, tuple) and not hasattr(cache, "bits"):
        # a quantized cache's buffers as stored (and its tail), for one decode step
        return kvattention.decode(queries, cache, scale)
    if (
        L > 1
        and sinks is None
        and not hasattr(cache, "bits")
        and B * H * L * keys.shape[2] * 4 <= MAX_SCORE_BYTES
    ):
        return plain_attention(queries, keys, values, scale, mask)
    return _ORIGINAL(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)


_ORIGINAL = base.scaled_dot_product_attention


def install(model: nn.Module) -> int:
    """Route the model's prefill attention through ``plain_attention``; returns how many model
    modules were patched (0: this architecture does not use mlx-lm's shared helper)."""
    names = {type(m).__module__ for _, m in model.named_modules()} | {type(model).__module__}
    patched = 0
    for name in sorted(names):
        module = sys.modules.get(name)
        if (
            module is not None
            and getattr(module, "scaled_dot_product_attention", None) is _ORIGINAL
        ):
            vars(module)["scaled_dot_product_attention"] = _prefill_aware  # a module attribute
            patched += 1
    return patched


def install_for(model: nn.Module) -> int:
    """``install``, and say so in the log; returns how many modules were patched."""
    patched = install(model)
    if patched:
        log.info(
            "prefill attention: plain matmul + softmax up to %d MiB of scores "
            "(no per-shape cuDNN set-up)",
            MAX_SCORE_BYTES >> 20,
        )
    return patched


def wanted() -> bool:
    """Only where cuDNN plans are the problem: MLX on CUDA."""
    return device_kind() == "cuda"
