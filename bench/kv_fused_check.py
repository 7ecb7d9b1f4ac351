#!/usr/bin/env python3
"""--kv-bits on CUDA: do kvattention's fused decode kernels compile and agree with dequantize +
attention (kvattention.check: relative error, with and without the full-precision tail, whole
and split over positions) for head widths, bits, groups, dtypes and query heads per KV head,
and what does one decode step's attention cost with them against dequantize + MLX's attention
and against MLX's attention over a full-precision cache (32 query heads over 8, 8-bit, 20
calls in one eval). Needs MLX's CUDA backend:
    python bench/kv_fused_check.py
"""

import sys
import time
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.engine import kvattention as k  # noqa: E402

kernels = k._build()
for D, bits, G in ((128, 8, 64), (128, 4, 64), (64, 8, 64), (64, 8, 32), (32, 8, 32)):
    for dt in (mx.bfloat16, mx.float16, mx.float32):
        for per_kv in (1, 3, 4, 8, 16) if dt == mx.bfloat16 and D == 128 else (4,):
            t = time.perf_counter()
            try:
                e = k.check(kernels, D, bits, G, dt, per_kv)
            except Exception as exc:  # noqa: BLE001
                e = repr(exc)[:600]
            print(D, bits, G, dt, per_kv, "error", e, f"{time.perf_counter() - t:.2f}s", flush=True)

H, Hk, D = 32, 8, 128


def bench_shape(B: int, n: int) -> None:
    cap = (n // 256 + 1) * 256
    q = mx.random.normal((B, H, 1, D)).astype(mx.bfloat16)
    kf = mx.random.normal((B, Hk, cap, D)).astype(mx.bfloat16)
    vf = mx.random.normal((B, Hk, cap, D)).astype(mx.bfloat16)
    kq = mx.quantize(kf, group_size=64, bits=8)
    vq = mx.quantize(vf, group_size=64, bits=8)
    tail = (kf[..., :32, :], vf[..., :32, :])
    lp = mx.zeros((B,), mx.int32)
    mx.eval(q, kf, vf, kq, vq, lp, *tail)
    s = D**-0.5

    def fused():
        return k.attend(kernels, q, kq, vq, lp, n - lp, n, s, 8, 64, tail=tail, nq=n - 10)

    def deq():
        kk = mx.dequantize(*kq, group_size=64, bits=8)[..., :n, :]
        vv = mx.dequantize(*vq, group_size=64, bits=8)[..., :n, :]
        return mx.fast.scaled_dot_product_attention(q, kk, vv, scale=s)

    def full():
        return mx.fast.scaled_dot_product_attention(q, kf[..., :n, :], vf[..., :n, :], scale=s)

    cells = []
    for name, f in (("full", full), ("fused", fused), ("dequantize", deq)):
        mx.eval([f() for _ in range(20)])
        t = time.perf_counter()
        for _ in range(5):
            mx.eval([f() for _ in range(20)])
        cells.append(f"{name} {(time.perf_counter() - t) / 100 * 1e6:.1f} us")
    err = mx.abs(fused().astype(mx.float32) - deq().astype(mx.float32)).max().item()
    print(f"B={B} n={n} splits={k.splits_for(B * Hk, n)}: " + ", ".join(cells), f"diff {err:.4f}")


for B, n in ((1, 300), (1, 2000), (8, 300), (32, 300), (64, 300), (64, 1500)):
    bench_shape(B, n)
