#!/usr/bin/env python3
"""What --kv-bits costs a decode step's KV cache and attention, without the rest of the model:
32 layers of (cache update + attention) per step, an eval per step, as the engine runs them
(mlx-lm's BatchKVCache and its mask for full precision; mlxd's QuantizedBatchKVCache with
attention routed as on CUDA: dequantize + MLX's attention, or kvattention's kernels reading the
codes and the full-precision tail). 8B llama shapes: 32 query heads over 8 KV heads of 128.

    python bench/kv_step_bench.py [--batches 1,8,32,64] [--contexts 256,1024] [--steps 40]

The model's own work per step (an 8B at 4 bits on an H200: ~5.4 ms at 1 stream, ~15 ms at 64)
is what these milliseconds add to; the served tok/s ratio is bench.py's (KV=1 issue15_gpu.sh).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlx_lm.models.cache import BatchKVCache  # noqa: E402

from mlxd.engine import attention, kvattention, kvcache  # noqa: E402

LAYERS, HEADS, KV_HEADS, D = 32, 32, 8, 128
TAIL = kvcache.TAIL  # the default, restored after a fused-no-tail run


def make(variant: str, padding: list[int]):
    if variant == "full":
        return BatchKVCache(padding)
    kvattention.allow(variant.startswith("fused"))
    kvcache.TAIL = 1 if variant == "fused-no-tail" else TAIL
    return kvcache.QuantizedBatchKVCache(padding, 8, 0, dequantize=True)


def run(variant: str, B: int, context: int, steps: int, warm: int = 4, padding: int = 0) -> float:
    """ms per step; ``variant`` may end in /NAME=VALUE settings of kvattention (WARPS, ...)."""
    variant, *settings = variant.split("/")
    saved = {}
    for setting in settings:
        name, value = setting.split("=")
        saved[name] = getattr(kvattention, name)
        setattr(kvattention, name, int(value))
    try:
        return _run(variant, B, context, steps, warm, padding)
    finally:
        for name, value in saved.items():
            setattr(kvattention, name, value)


def _run(variant: str, B: int, context: int, steps: int, warm: int, padding: int) -> float:
    mx.random.seed(1)
    rows = [(37 * i) % padding if padding else 0 for i in range(B)]  # left padding per row
    caches = [make(variant, rows) for _ in range(LAYERS)]
    prompt = mx.random.normal((B, KV_HEADS, context, D)).astype(mx.bfloat16)
    for c in caches:
        c.update_and_fetch(prompt, prompt)
    mx.eval([c.state for c in caches])
    q = mx.random.normal((B, HEADS, 1, D)).astype(mx.bfloat16)
    new = mx.random.normal((B, KV_HEADS, 1, D)).astype(mx.bfloat16)
    mx.eval(q, new)
    scale = D**-0.5
    t0 = 0.0
    for step in range(warm + steps):
        if step == warm:
            t0 = time.perf_counter()
        outs = []
        h = q
        for c in caches:
            mask = c.make_mask(1)  # the model makes it before the layer writes
            k, v = c.update_and_fetch(new, new)
            h = attention._prefill_aware(h, k, v, c, scale, mask)
            outs.append(h)
        mx.eval(outs)
    return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--contexts", default="256,1024")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variants", default="full,dequantize,fused,fused-no-tail")
    ap.add_argument("--padding", type=int, default=0, help="rows left-padded by up to this many")
    a = ap.parse_args()
    attention_ok = mx.cuda.is_available()
    print(
        f"# MLX {mx.__version__}, CUDA {attention_ok}; ms per step of {LAYERS} layers", flush=True
    )
    for context in (int(x) for x in a.contexts.split(",")):
        for B in (int(x) for x in a.batches.split(",")):
            row = {}
            for variant in a.variants.split(","):
                try:
                    row[variant] = run(variant, B, context, a.steps, padding=a.padding)
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"{variant} B={B} ctx={context}: {exc!r}"[:400], flush=True)
            full = row.get("full")
            cells = "  ".join(
                f"{k} {v:.3f}" + (f" ({v - full:+.3f})" if full and k != "full" else "")
                for k, v in row.items()
            )
            print(f"B={B:3d} ctx={context:5d} pad<{a.padding}  {cells}", flush=True)


if __name__ == "__main__":
    main()
