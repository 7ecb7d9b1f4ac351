#!/usr/bin/env python3
"""Does a new prefill shape stall the device? Times attention at new and repeated shapes.

    python bench/shape_stalls.py [--model DIR]

A batched prefill pads its prompts to the longest one and masks the padding with an array mask;
a lone prompt uses the "causal" mask. On CUDA, a first call at a new (batch, length) can pay for
kernel or plan set-up. This times ``mx.fast.scaled_dot_product_attention`` (8B-shaped heads) at a
few lengths, each twice, with an array mask (batched, padded) and with "causal" (alone), and,
with --model, a whole batched prefill through mlx-lm's BatchKVCache at new and repeated lengths.
Prints one line per call: what, shape, first or repeat, milliseconds.
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx


def timed(fn) -> float:
    mx.synchronize()
    t = time.perf_counter()
    mx.eval(fn())
    mx.synchronize()
    return (time.perf_counter() - t) * 1e3


def attention(batch: int, length: int, masked: bool) -> float:
    heads, kv_heads, dim = 32, 8, 128
    q = mx.random.normal((batch, heads, length, dim)).astype(mx.bfloat16)
    k = mx.random.normal((batch, kv_heads, length, dim)).astype(mx.bfloat16)
    v = mx.random.normal((batch, kv_heads, length, dim)).astype(mx.bfloat16)
    mx.eval(q, k, v)
    if masked:
        pad = mx.arange(batch)[:, None] % 3  # some rows left-padded
        pos = mx.arange(length)
        mask = (pos[None, None, :] <= pos[None, :, None]) & (pos[None, None, :] >= pad[:, :, None])
        mask = mask[:, None]
        mx.eval(mask)
    else:
        mask = "causal"
    return timed(lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=dim**-0.5, mask=mask))


def prefill(model, batch: int, length: int) -> float:
    from mlx_lm.models.cache import BatchKVCache

    cache = [BatchKVCache([i % 3 for i in range(batch)]) for _ in model.layers]
    tokens = mx.random.randint(0, 1000, (batch, length))
    return timed(lambda: model(tokens, cache=cache))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    a = p.parse_args()
    print(f"mlx {mx.__version__} {mx.default_device()}", flush=True)
    for masked, batch in ((True, 7), (False, 1), (True, 1)):
        for length in (35, 36, 37, 35, 38, 36, 200, 200):
            ms = attention(batch, length, masked)
            print(
                f"sdpa {'array-mask' if masked else 'causal':<10} B={batch:<3} L={length:<4} "
                f"{ms:9.1f} ms",
                flush=True,
            )
    if a.model:
        from mlx_lm import load

        model, _ = load(a.model)
        for batch, length in (
            (7, 35),
            (7, 36),
            (7, 35),
            (7, 37),
            (8, 37),
            (7, 36),
            (1, 41),
            (1, 42),
            (1, 41),
        ):
            print(
                f"prefill B={batch:<3} L={length:<4} {prefill(model, batch, length):9.1f} ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
