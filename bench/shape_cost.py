#!/usr/bin/env python3
"""What a shape the device has not run before costs, against the same shape run again.

    python bench/shape_cost.py --model DIR [--dense] [--out FILE]

mlxd's engine feeds the model shapes that change from step to step: a prefill piece's length
(the adaptive budget), the cached prefix it attends to, the number of decoding rows (joins and
finishes). On a backend that plans or compiles per shape (cuDNN graphs, cuBLAS heuristics, JIT
kernels) a new shape costs far more than its arithmetic. This times, with a device sync around
each call and mlxd's prefill attention installed as the engine does on CUDA:

- a lone prompt piece of L tokens after a cached prefix of P tokens, first time and again (the
  cache trimmed back between the two);
- a decode step of B rows (a left-padded batch cache), first time and the step after;
- the parts: one bf16/quantized linear of M rows, mlxd's plain attention for (L, S), each new
  and repeated; plain attention with S padded to a multiple of 256.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm import load
from mlx_lm.models.cache import BatchKVCache, make_prompt_cache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.engine import attention  # noqa: E402


def timed(fn, *args, **kwargs) -> float:
    """Milliseconds for ``fn(*args, **kwargs)`` evaluated, the device synced around it."""
    mx.synchronize()
    t = time.perf_counter()
    mx.eval(fn(*args, **kwargs))
    mx.synchronize()
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dense", action="store_true")
    p.add_argument("--out", default="")
    a = p.parse_args()
    model, tok = load(a.model)
    if a.dense:
        from mlxd.models.weights import dense_twin

        model = dense_twin(model)
    patched = attention.install(model) if attention.wanted() else 0
    print(f"plain prefill attention installed in {patched} module(s)")
    vocab = tok.vocab_size
    rows: list[dict] = []

    def ids(n: int, seed: int = 0) -> mx.array:
        return mx.array([[(seed * 7919 + i * 31) % (vocab - 10) + 5 for i in range(n)]])

    def record(kind: str, first: float, again: float, **shape) -> None:
        rows.append(
            {"kind": kind, "first_ms": round(first, 2), "again_ms": round(again, 2), **shape}
        )
        print(f"  {kind:18} {shape}  first {first:8.2f} ms  again {again:8.2f} ms", flush=True)

    # Warm the common kernels once.
    cache = make_prompt_cache(model)
    timed(model, ids(512), cache=cache)
    timed(model, ids(1), cache=cache)

    print("lone prompt piece of L tokens after P cached:")
    for P, L in [(512, 75), (512, 84), (640, 89), (700, 98), (900, 64), (900, 128), (1100, 96)]:
        cache = make_prompt_cache(model)
        timed(model, ids(P, P), cache=cache)
        first = timed(model, ids(L, 1), cache=cache)
        for c in cache:
            c.trim(L)
        again = timed(model, ids(L, 1), cache=cache)
        record("prefill piece", first, again, P=P, L=L)

    print("decode step of B rows (left-padded batch cache, ~40-token prompts):")
    for B in [33, 34, 35, 37, 39, 41]:
        cache = [BatchKVCache([i % 7 for i in range(B)]) for _ in model.layers]
        prompts = mx.concatenate([ids(48, s) for s in range(B)], axis=0)
        timed(model, prompts, cache=cache)
        tokens = prompts[:, -1:]
        first = timed(model, tokens, cache=cache)
        again = timed(model, tokens, cache=cache)
        record("decode", first, again, B=B)

    print("parts:")
    layer = model.layers[0]
    mlp = layer.mlp
    dim = model.args.hidden_size
    for M in [75, 84, 89, 98, 33, 35, 37]:
        x = mx.random.normal((1, M, dim)).astype(mx.bfloat16)
        first = timed(mlp, x)
        again = timed(mlp, x)
        record("mlp", first, again, M=M)
    heads = model.args.num_attention_heads
    kv_heads = getattr(model.args, "num_key_value_heads", heads) or heads
    D = dim // heads
    for L, S in [(75, 587), (84, 671), (89, 760), (98, 858), (98, 900)]:
        q = mx.random.normal((1, heads, L, D)).astype(mx.bfloat16)
        k = mx.random.normal((1, kv_heads, S, D)).astype(mx.bfloat16)
        v = mx.random.normal((1, kv_heads, S, D)).astype(mx.bfloat16)
        first = timed(attention.plain_attention, q, k, v, D**-0.5, "causal")
        again = timed(attention.plain_attention, q, k, v, D**-0.5, "causal")
        record("plain attention", first, again, L=L, S=S)
        first = timed(mx.fast.scaled_dot_product_attention, q, k, v, scale=D**-0.5, mask="causal")
        again = timed(mx.fast.scaled_dot_product_attention, q, k, v, scale=D**-0.5, mask="causal")
        record("fast sdpa", first, again, L=L, S=S)
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
