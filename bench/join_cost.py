#!/usr/bin/env python3
"""What a long prompt joining a decoding batch costs, step by step and part by part.

    python bench/join_cost.py --model DIR [--decoding 32] [--long 4] [--long-tokens 1500]
                              [--chunk 512] [--chunks 98,84,...] [--rows 1] [--dense]
                              [--attention] [--rowfilter] [--keep-pool] [--out FILE]

mlx-lm's ``BatchGenerator`` (what mlxd's engine steps) with ``--decoding`` short sequences
decoding, then ``--long`` long prompts inserted, prefilled ``--rows`` x ``--chunk`` tokens per
step beside the decodes (what mlxd's pacer allows), until every long prompt decodes and a few
sequences finish. Every ``next()`` is timed with a device sync around it, and so are the parts a
join and a finish run (PromptProcessingBatch.split / .generate, GenerationBatch.extend / .filter,
the caches' extend / filter), so a slow step says where its time went. ``--dense``: serve the
dense twin of a quantized model (mlxd's routing on CUDA from batch 2); ``--attention``: mlxd's
prefill attention (engine/attention.py, what the engine installs on CUDA); ``--chunks``: cycle the
prefill chunk through these sizes step by step, as the adaptive budget moves (new shapes);
``--rowfilter``: mlxd's one-copy filter for finished sequences (engine/rowfilter.py);
``--keep-pool``: CUDA's memory pools keep freed memory (``keep_cuda_pool``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm import load

G = importlib.import_module("mlx_lm.generate")  # the package's 'generate' is a function

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PARTS: dict[str, list[float]] = collections.defaultdict(list)
_depth = [0]


def timed_part(owner, name: str, label: str) -> None:
    """Wrap ``owner.name`` so each outermost call is timed with a device sync around it."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if _depth[0]:
            return original(*args, **kwargs)
        mx.synchronize()
        _depth[0] += 1
        t = time.perf_counter()
        try:
            out = original(*args, **kwargs)
            mx.synchronize()
            return out
        finally:
            _depth[0] -= 1
            PARTS[label].append(time.perf_counter() - t)

    setattr(owner, name, wrapper)


def install_timers() -> None:
    timed_part(G.PromptProcessingBatch, "split", "prompt.split (deepcopy + filter)")
    timed_part(G.PromptProcessingBatch, "generate", "prompt.generate (joiners' first step)")
    timed_part(G.GenerationBatch, "extend", "generation.extend (caches merged)")
    timed_part(G.GenerationBatch, "filter", "generation.filter (a finished one out)")
    timed_part(G.PromptProcessingBatch, "prompt", "prompt.prompt (prefill chunk)")


# CUmemPool_attribute (CUDA driver API, cuda.h): bytes the pool keeps when a stream synchronizes.
CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4
KEEP_ALL = 2**64 - 1


def keep_cuda_pool() -> int:
    """Let each CUDA device's default memory pool keep the memory freed into it; returns how
    many pools now do (0 where there is no CUDA driver).

    MLX allocates with ``cudaMallocAsync`` from the default pool, whose release threshold is 0:
    at every synchronization the memory freed into it goes back to the driver, and the next
    allocation of a size MLX's own cache does not hold maps it again. A batch whose row count
    changes (a join, a finish) allocates its whole KV cache anew: on an H200 (8B, 35 rows of
    ~1800 tokens) the step after a finish took 70-80 ms against 33, once 4.5 s. PyTorch's CUDA
    allocator keeps its memory the same way. The driver API (libcuda) reaches the same pools
    whichever CUDA runtime MLX was built with. Not in the engine: with it, the H200 server's
    long-prompt decoders had inter-token p99/p50 5.8x against 2.66x without (MLX counts a pool's
    kept memory as in use and empties its own cache for it)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    kept = 0
    for index in range(count.value):
        device, pool = ctypes.c_int(0), ctypes.c_void_p()
        value = ctypes.c_uint64(KEEP_ALL)
        if (
            cuda.cuDeviceGet(ctypes.byref(device), index) == 0
            and cuda.cuDeviceGetDefaultMemPool(ctypes.byref(pool), device) == 0
            and cuda.cuMemPoolSetAttribute(
                pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, ctypes.byref(value)
            )
            == 0
        ):
            kept += 1
    return kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--decoding", type=int, default=32)
    p.add_argument("--long", type=int, default=4)
    p.add_argument("--long-tokens", type=int, default=1500)
    p.add_argument("--short-tokens", type=int, default=40)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--decode-tokens", type=int, default=200)
    p.add_argument("--chunks", default="", help="comma-separated chunk sizes to cycle through")
    p.add_argument("--dense", action="store_true")
    p.add_argument("--attention", action="store_true")
    p.add_argument("--rowfilter", action="store_true")
    p.add_argument("--keep-pool", action="store_true")
    p.add_argument("--out", default="")
    a = p.parse_args()

    model, tok = load(a.model)
    if a.dense:
        from mlxd.models.weights import dense_twin

        model = dense_twin(model)
    if a.attention:
        from mlxd.engine import attention

        print(f"mlxd prefill attention in {attention.install(model)} module(s)")
    if a.rowfilter:
        from mlxd.engine import rowfilter

        rowfilter.install()
    if a.keep_pool:
        print(f"CUDA pools keeping freed memory: {keep_cuda_pool()}")
    chunks = [int(c) for c in a.chunks.split(",") if c] or [a.chunk]
    vocab = tok.vocab_size
    install_timers()
    gen = G.BatchGenerator(
        model,
        stop_tokens=[],
        completion_batch_size=a.decoding + a.long,
        prefill_batch_size=a.decoding,
        prefill_step_size=a.chunk,
    )

    def prompt(n: int, seed: int) -> list[int]:
        return [(seed * 7919 + i * 31) % (vocab - 10) + 5 for i in range(n)]

    steps: list[dict] = []

    def step(label: str) -> dict:
        before = {k: len(v) for k, v in PARTS.items()}
        mx.synchronize()
        t = time.perf_counter()
        progress, responses = gen.next()
        mx.synchronize()
        ms = (time.perf_counter() - t) * 1e3
        parts = {k: round(sum(v[before.get(k, 0) :]) * 1e3, 2) for k, v in PARTS.items()}
        parts = {k: v for k, v in parts.items() if v >= 0.05}
        joined = sum(1 for r in progress if r.end_of_prompt)
        prefilling = sum(1 for r in progress if not r.end_of_prompt)
        finished = sum(1 for r in responses if r.finish_reason is not None)
        row = {
            "phase": label,
            "ms": round(ms, 2),
            "decoding": len(gen._generation_batch),
            "joined": joined,
            "prefilling": prefilling,
            "finished": finished,
            "parts": parts,
        }
        steps.append(row)
        return row

    # The decoding batch: short prompts, long budgets, all in at once.
    gen.insert(
        [prompt(a.short_tokens, i) for i in range(a.decoding)],
        max_tokens=[a.decode_tokens + 10 * i for i in range(a.decoding)],
    )
    for _ in range(40):  # reach steady decode (compiles, first growth)
        step("warm")
    gen.prefill_batch_size = a.rows
    gen.insert([prompt(a.long_tokens, 1000 + i) for i in range(a.long)], max_tokens=[64] * a.long)
    while sum(1 for s in steps if s["phase"] == "long") < 400 and len(gen._generation_batch):
        gen.prefill_step_size = chunks[len(steps) % len(chunks)]
        row = step("long")
        if row["decoding"] == a.decoding + a.long and not gen._unprocessed_sequences:
            if not len(gen._prompt_batch):
                break
    for _ in range(a.decode_tokens):  # until some of the short ones finish
        if not len(gen._generation_batch):
            break
        step("tail")

    decode_only = [
        s["ms"]
        for s in steps
        if s["phase"] != "warm" and not (s["joined"] or s["prefilling"] or s["finished"])
    ]
    base = statistics.median(decode_only) if decode_only else float("nan")
    print(f"decode-only step: median {base:.2f} ms over {len(decode_only)} steps")
    print("steps over 1.5x that:")
    for s in steps:
        if s["phase"] != "warm" and s["ms"] > 1.5 * base:
            print(
                f"  {s['phase']:5} {s['ms']:8.2f} ms  decoding {s['decoding']:3}  joined "
                f"{s['joined']}  prefilling {s['prefilling']}  finished {s['finished']}  {s['parts']}"
            )
    print("parts (count, median ms, max ms):")
    for k, v in PARTS.items():
        print(f"  {k:40} {len(v):4} {statistics.median(v) * 1e3:8.2f} {max(v) * 1e3:8.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"args": vars(a), "steps": steps}, indent=1))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
