#!/usr/bin/env python3
"""--kv-bits on CUDA: does kvattention's fused decode kernel compile and agree with dequantize +
attention (kvattention.check, relative error) for a few head widths, bits and dtypes, and what
does one decode step's attention cost with it against dequantize + MLX's attention (batch 64,
32 query heads over 8, 300 of 512 positions, 8-bit). Needs MLX's CUDA backend:
    python bench/kv_fused_check.py
"""

import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.engine import kvattention as k  # noqa: E402

kern = k._build()
for D, bits, G in ((128, 8, 64), (128, 4, 64), (64, 8, 64), (64, 8, 32)):
    for dt in (mx.bfloat16, mx.float16, mx.float32):
        t = time.perf_counter()
        try:
            e = k.check(kern, D, bits, G, dt)
        except Exception as exc:
            e = repr(exc)[:300]
        print(D, bits, G, dt, "error", e, f"{time.perf_counter() - t:.2f}s", flush=True)
# speed: batch 64, 32 heads over 8, 300 positions, 8-bit, against dequantize + sdpa
B, H, Hk, cap, n, D = 64, 32, 8, 512, 300, 128
q = mx.random.normal((B, H, 1, D)).astype(mx.bfloat16)
kq = mx.quantize(mx.random.normal((B, Hk, cap, D)).astype(mx.bfloat16), group_size=64, bits=8)
vq = mx.quantize(mx.random.normal((B, Hk, cap, D)).astype(mx.bfloat16), group_size=64, bits=8)
lp = mx.zeros((B,), mx.int32)
mx.eval(q, kq, vq, lp)


def fused():
    return k.attend(kern, q, kq, vq, lp, n, D**-0.5, 8, 64)


def deq():
    kk = mx.dequantize(*kq, group_size=64, bits=8)[..., :n, :]
    vv = mx.dequantize(*vq, group_size=64, bits=8)[..., :n, :]
    return mx.fast.scaled_dot_product_attention(q, kk, vv, scale=D**-0.5)


for name, f in (("fused", fused), ("dequantize+sdpa", deq)):
    for _ in range(3):
        mx.eval(f())
    t = time.perf_counter()
    for _ in range(100):
        mx.eval(f())
    print(name, f"{(time.perf_counter() - t) * 10:.3f} ms per call (eval each)", flush=True)
print("max diff", mx.abs(fused().astype(mx.float32) - deq().astype(mx.float32)).max().item())
