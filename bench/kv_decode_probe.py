#!/usr/bin/env python3
"""--kv-bits 8 against full precision in the engine's own decode loop, in-process: mlx-lm's
``BatchGenerator`` pipelined as mlxd steps it (no sync between steps), the model served as mlxd
serves it on a GPU (a dense twin for batches, mlxd's attention routing, its row filter), with
variants that take the attention out to say where a step's time goes.

    python bench/kv_decode_probe.py --model DIR [--streams 64] [--tokens 96]
                                    [--variants full,kv8,kv8-ref,kv8-noattn,full-noattn]

``kv8-ref``: kv8 with the kernels' place taken by dequantize + attention; ``*-noattn``: attention
replaced by a no-op of the right shape (the queries), so the rest of the step is measured alone.
Prints, per variant, the first decode step of the fresh batch (synced) and the decode steps'
median and mean (pipelined, as served).

``--hits``: the second round starts from the prompt cache as served (mlx-lm's ``LRUPromptCache``
holding the first round's finished caches, ``fetch_nearest_cache`` for each new prompt), and the
prefill/join steps show their host time (the call) beside the total (after a sync).
``kv8-evald``: kv8 with each finished cache evaluated as it enters the prompt cache.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--variants", default="full,kv8,kv8-ref,kv8-noattn,full-noattn")
    p.add_argument("--dense", action="store_true", help="decode on a dense twin (as mlxd on a GPU)")
    p.add_argument("--hits", action="store_true", help="round 2 starts from the prompt cache")
    a = p.parse_args()

    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache

    from bench import messages_for
    from mlxd.engine import attention, kvattention, kvcache, rowfilter
    from mlxd.models import weights

    model, tok = load(a.model)
    if a.dense:
        model = weights.DualModel(
            model,
            weights.dense_twin(model),
            weights.Routing(decode_dense_from=2, prefill_dense=True),
        )
    quantized = getattr(model, "quantized", model)
    attention.install(quantized)
    rowfilter.install()
    rounds = [
        [
            tok.apply_chat_template(messages_for(i), add_generation_prompt=True)
            for i in range(1000 * r, 1000 * r + a.streams)
        ]
        for r in range(2)
    ]
    original_attend, original_prefill = kvattention.attend, attention._prefill_aware
    modules = [sys.modules[n] for n in {type(m).__module__ for _, m in quantized.named_modules()}]

    def route(fn) -> None:
        for module in modules:
            if getattr(module, "scaled_dot_product_attention", None) in (
                original_prefill,
                route.last,
            ):
                module.scaled_dot_product_attention = fn
        route.last = fn

    route.last = original_prefill

    def noattn(queries, keys, values, cache, scale, mask, sinks=None):
        if queries.shape[2] > 1:
            return original_prefill(queries, keys, values, cache, scale, mask, sinks)
        return queries

    def ref_attend(
        kernels,
        q,
        keys,
        values,
        lp,
        lengths,
        n,
        scale,
        bits,
        group,
        tail=None,
        nq=None,
        splits=None,
    ):
        return kvattention.reference(q, keys, values, lp, n, scale, bits, group, tail=tail, nq=nq)

    for variant in a.variants.split(","):
        bits = 8 if variant.startswith("kv8") else None
        kvattention.allow(bits is not None)
        kvattention.attend = ref_attend if variant == "kv8-ref" else original_attend
        route(noattn if variant.endswith("noattn") else original_prefill)
        maker = kvcache.CacheMaker(quantized, bits, 0, True)

        # A prompt the prompt cache missed (--hits) starts from a new cache of the variant's kind.
        def fresh(maker=maker):
            return maker() or make_prompt_cache(quantized)

        gen = BatchGenerator(
            model,
            stop_tokens=[],
            completion_batch_size=a.streams,
            prefill_batch_size=a.streams,
            prefill_step_size=2048,
        )
        kept = LRUPromptCache(max_bytes=1 << 31)
        for rnd, prompts in enumerate(rounds if a.hits else [rounds[0]] * 2):
            caches = None if bits is None else [maker() for _ in prompts]
            todo = list(prompts)
            if a.hits and rnd == 1:
                found = [kept.fetch_nearest_cache("m", list(p)) for p in prompts]
                hit = [c is not None for c, _ in found]
                caches = [c if c is not None else fresh() for c, _ in found]
                todo = [
                    rest if c is not None else p
                    for (c, rest), p in zip(found, prompts, strict=True)
                ]
                print(
                    f"{variant:12} hits {sum(hit)}/{len(prompts)}, cached tokens "
                    f"{sum(len(p) - len(t) for p, t in zip(prompts, todo, strict=True))}",
                    flush=True,
                )
            gen.insert(todo, max_tokens=[a.tokens] * len(todo), caches=caches)
            times, hosts, kinds, done = [], [], [], 0
            while done < len(prompts):
                mx.synchronize()  # only around the steps that prefill or join (below)
                t = time.perf_counter()
                progress, responses = gen.next()
                hosts.append(time.perf_counter() - t)
                joined = any(r.end_of_prompt for r in progress)
                if joined or any(not r.end_of_prompt for r in progress):
                    mx.synchronize()
                times.append(time.perf_counter() - t)
                kinds.append("join" if joined else "prefill" if progress else "decode")
                for r in responses:
                    if r.finish_reason is None:
                        continue
                    done += 1
                    if r.prompt_cache is not None:
                        if variant == "kv8-evald":
                            mx.eval(
                                [c.keys for c in r.prompt_cache]
                                + [c.values for c in r.prompt_cache]
                                + [x for c in r.prompt_cache for x in (c.tail() or ())]
                            )
                        kept.insert_cache("m", list(r.all_tokens), r.prompt_cache)
            decode = [t for t, k in zip(times, kinds, strict=True) if k == "decode"][2:-2]
            joins = [
                f"{h * 1e3:.0f}/{t * 1e3:.0f}"
                for t, h, k in zip(times, hosts, kinds, strict=True)
                if k != "decode"
            ]
            if rnd == 1:
                print(
                    f"{variant:12} prefill+join steps (host/total) "
                    + " ".join(joins)
                    + f" ms; decode p50 {statistics.median(decode) * 1e3:.2f} ms, mean "
                    f"{statistics.fmean(decode) * 1e3:.2f} ms over {len(decode)}",
                    flush=True,
                )
        gen.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
