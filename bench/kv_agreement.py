#!/usr/bin/env python3
"""--kv-bits on a real model: greedy agreement with the full-precision cache, KV bytes per token
and tok/s, in-process (mlxd's engine, no HTTP).

    python bench/kv_agreement.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--prompts 8]
                                 [--tokens 64] [--bits 8,4] [--out FILE.json]

Each prompt (bench.py's story prompts) runs greedy for --tokens tokens, all prompts together in
one batch, once per cache setting. A prompt agrees when its token ids are the same as with the
full-precision cache; the mean common prefix says how far the others get before they part.

``--cuda-path`` runs the engine as it runs on CUDA (see ``emulate_cuda_path``). ``--reference``
also runs each prompt alone through mlx-lm's own ``generate_step``: full
precision, its ``QuantizedKVCache`` from the first token (``quantized_kv_start=0``) at each
--bits and group size 64 and 32, and a full-precision cache whose keys and values are rounded to
bfloat16 (what a GPU keeps) -- so a disagreement can be told apart from a batch-cache bug: it is
what quantizing the cache does to this model, whoever does it.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(engine, prompts: list[list[int]], tokens: int) -> tuple[list[list[int]], float]:
    from mlxd.engine.events import Delta, Failed, Finished
    from mlxd.engine.loop import Job
    from mlxd.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, logprobs=0)
    boxes = [queue.Queue() for _ in prompts]
    start = time.perf_counter()
    for p, box in zip(prompts, boxes, strict=True):
        engine.submit(Job(p, params, box.put))
    out = []
    for box in boxes:
        ids: list[int] = []
        while True:
            ev = box.get(timeout=3600)
            if isinstance(ev, Delta):
                ids += [lp.token for lp in ev.logprobs]
            elif isinstance(ev, Finished):
                break
            elif isinstance(ev, Failed):
                raise RuntimeError(ev.error)
        out.append(ids)
    return out, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--bits", default="8,4")
    p.add_argument("--out")
    p.add_argument("--reference", action="store_true", help="also mlx-lm's own caches, alone")
    p.add_argument(
        "--cuda-path",
        action="store_true",
        help="the engine as on CUDA: caches quantized at rest, prefill attention on the chunk as "
        "computed, decode steps reading codes plus a full-precision tail (kvattention), with "
        "kvattention.reference standing in for the CUDA kernels",
    )
    args = p.parse_args()
    if args.cuda_path:
        emulate_cuda_path()

    sys.path.insert(0, str(ROOT / "bench"))
    from bench import messages_for
    from mlxd.engine.loop import Engine, EngineSettings
    from mlxd.models import loader

    loaded = loader.load(args.model)
    tok = loaded.tokenizer
    prompts = [
        tok.apply_chat_template(messages_for(i), add_generation_prompt=True)
        for i in range(args.prompts)
    ]
    results = {}
    for bits in [None] + [int(b) for b in args.bits.split(",") if b]:
        settings = EngineSettings(
            max_batch_size=max(args.prompts, 1), prompt_cache_bytes=0, kv_bits=bits
        )
        engine = Engine(loaded.model, tok, settings)
        engine.start()
        assert engine.ready.wait(600), "warm-up failed"
        ids, seconds = run(engine, prompts, args.tokens)
        results[bits] = {
            "ids": ids,
            "seconds": seconds,
            "tok_s": sum(len(x) for x in ids) / seconds,
            "kv_bytes_per_token": engine.kv_bytes_per_token,
        }
        engine.shutdown(10)
    base = results[None]
    report = {"model": args.model, "prompts": args.prompts, "tokens": args.tokens, "settings": {}}
    lines = [
        f"{Path(args.model).name}: {args.prompts} prompts x {args.tokens} greedy tokens, one batch"
    ]
    for bits, r in results.items():
        agree = [a == b for a, b in zip(r["ids"], base["ids"], strict=True)]
        prefix = [_common(a, b) for a, b in zip(r["ids"], base["ids"], strict=True)]
        entry = {
            "identical": sum(agree),
            "mean_common_prefix": sum(prefix) / len(prefix),
            "tok_s": r["tok_s"],
            "tok_s_ratio": r["tok_s"] / base["tok_s"],
            "kv_bytes_per_token": r["kv_bytes_per_token"],
            "kv_ratio": r["kv_bytes_per_token"] / base["kv_bytes_per_token"],
        }
        report["settings"][str(bits or "full")] = entry
        lines.append(
            f"  kv-bits {bits or 'none':>4}: {entry['identical']}/{args.prompts} identical, mean "
            f"common prefix {entry['mean_common_prefix']:.1f} tokens; {entry['tok_s']:.2f} tok/s "
            f"({entry['tok_s_ratio']:.2f}x); KV {entry['kv_bytes_per_token']} bytes/token "
            f"({entry['kv_ratio']:.2f}x)"
        )
    if args.reference:
        bits_list = [int(b) for b in args.bits.split(",") if b]
        report["reference"] = reference(loaded.model, prompts, args.tokens, bits_list, base["ids"])
        for name, prefixes in report["reference"].items():
            same = sum(n == args.tokens for n in prefixes)
            lines.append(
                f"  mlx-lm alone, {name:>16}: {same}/{len(prefixes)} identical to mlxd's full "
                f"precision, mean common prefix {sum(prefixes) / len(prefixes):.1f} tokens"
            )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def reference(model, prompts, tokens: int, bits_list: list[int], base: list[list[int]]) -> dict:
    """Common prefixes with ``base`` of mlx-lm's ``generate_step`` run alone per prompt, per cache."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models import cache as mlx_cache

    full = mlx_cache.KVCache.update_and_fetch

    def bf16(self, keys, values):
        dtype = keys.dtype
        k, v = keys.astype(mx.bfloat16).astype(dtype), values.astype(mx.bfloat16).astype(dtype)
        return full(self, k, v)

    variants: dict[str, tuple[dict, object]] = {"full precision": ({}, full)}
    for bits in bits_list:
        for group in (64, 32):
            kw = {"kv_bits": bits, "kv_group_size": group, "quantized_kv_start": 0}
            variants[f"{bits}-bit, group {group}"] = (kw, full)
    variants["bfloat16 keys/values"] = ({}, bf16)
    out: dict[str, list[int]] = {}
    try:
        for name, (kw, update) in variants.items():
            mlx_cache.KVCache.update_and_fetch = update  # type: ignore[method-assign]
            out[name] = [
                _common(
                    [int(t) for t, _ in generate_step(mx.array(p), model, max_tokens=tokens, **kw)],
                    b,
                )
                for p, b in zip(prompts, base, strict=True)
            ]
    finally:
        mlx_cache.KVCache.update_and_fetch = full  # type: ignore[method-assign]
    return out


def emulate_cuda_path() -> None:
    """What the engine does on CUDA, on any device: its attention routing (engine/attention.py),
    caches that dequantize, and decode steps through kvattention (the tail included), computed
    by ``reference`` (the CUDA kernels' check compares them against it)."""
    import mlx.core as mx

    from mlxd.engine import attention, kvattention

    attention.wanted = lambda: True  # type: ignore[assignment]
    mx.cuda.is_available = lambda: True  # type: ignore[assignment]
    kvattention._build = lambda: object()  # type: ignore[assignment]
    kvattention.check = lambda *a: 0.0  # type: ignore[assignment]  # reference against itself

    def attend(kernels, q, keys, values, lp, lengths, n, scale, bits, group, tail=None, nq=None):
        return kvattention.reference(q, keys, values, lp, n, scale, bits, group, tail=tail, nq=nq)

    kvattention.attend = attend  # type: ignore[assignment]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


if __name__ == "__main__":
    sys.exit(main())
