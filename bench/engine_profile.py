#!/usr/bin/env python3
"""Where mlxd's engine spends a round of concurrent requests, in-process (no HTTP): cProfile
around every engine step on the generation thread, and a step trace (MLXD_STEP_TRACE).

    python bench/engine_profile.py --model DIR [--streams 64] [--max-tokens 128] [--rounds 2]
                                   [--variants "full=;kv8=--kv-bits 8"] [--top 30] [--out DIR]

Each variant (NAME=FLAGS, flags: --kv-bits N, --quantized-kv-start N) loads nothing twice: one
model, one engine per variant, ``--rounds`` rounds of ``--streams`` requests with bench.py's
prompts (the first round unprofiled), greedy, ``--max-tokens`` each. Prints each variant's round
time and tok/s and its functions by own and by cumulative time, so two variants side by side say
which Python function (a sync hidden in it included) the difference is in.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import queue
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, flags = text.partition("=")
    words, opts = flags.split(), {}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        opts[flag.lstrip("-").replace("-", "_")] = int(value)
    return name.strip(), opts


def run_round(engine, prompts, max_tokens: int) -> tuple[int, float]:
    from mlxd.engine.events import Failed, Finished
    from mlxd.engine.loop import Job
    from mlxd.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    boxes = [queue.Queue() for _ in prompts]
    start = time.perf_counter()
    for p, box in zip(prompts, boxes, strict=True):
        engine.submit(Job(p, params, box.put))
    tokens = 0
    for box in boxes:
        while True:
            ev = box.get(timeout=3600)
            if isinstance(ev, Finished):
                tokens += ev.completion_tokens
                break
            elif isinstance(ev, Failed):
                raise RuntimeError(ev.error)
    return tokens, time.perf_counter() - start


def synced_timers() -> dict:
    """Wrap the KV caches' methods and the attention entry points with a device sync before and
    after each call; returns {name: [calls, seconds]}, filled as they run."""
    import mlx.core as mx
    from mlx_lm.models import cache as mlx_cache

    from mlxd.engine import kvattention, kvcache

    totals: dict = {}

    def wrap(owner, attr: str, label: str) -> None:
        found = owner.__dict__.get(attr, getattr(owner, attr))
        raw = found.__func__ if isinstance(found, classmethod) else found

        def timed(*a, **k):
            mx.synchronize()
            t = time.perf_counter()
            result = raw(*a, **k)
            mx.eval(result) if isinstance(result, mx.array) else None
            mx.synchronize()
            entry = totals.setdefault(label, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t
            return result

        if isinstance(owner.__dict__.get(attr), classmethod):
            setattr(owner, attr, classmethod(lambda cls, *a, **k: timed(cls, *a, **k)))
        else:
            setattr(owner, attr, timed)

    for cls in (kvcache.QuantizedBatchKVCache, mlx_cache.BatchKVCache, mlx_cache.KVCache):
        for attr in ("update_and_fetch", "finalize", "filter", "extend", "extract", "flush"):
            if attr in cls.__dict__:
                wrap(cls, attr, f"{cls.__name__}.{attr}")
    wrap(kvcache.QuantizedBatchKVCache, "merge", "QuantizedBatchKVCache.merge")
    wrap(mlx_cache.BatchKVCache, "merge", "BatchKVCache.merge")
    wrap(kvattention, "decode", "kvattention.decode")
    return totals


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default="full=;kv8=--kv-bits 8")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", default="")
    p.add_argument(
        "--sync",
        action="store_true",
        help="time the KV caches' methods and attention with a device sync around each call "
        "(slower overall, but says which of them the device time is in)",
    )
    args = p.parse_args()
    timed = synced_timers() if args.sync else None

    from bench import messages_for
    from mlxd.engine import running
    from mlxd.engine.loop import Engine, EngineSettings
    from mlxd.models import loader

    loaded = loader.load(args.model)
    tok = loaded.tokenizer
    offset = 0
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for text in args.variants.split(";"):
        name, opts = parse_variant(text)
        if out:
            os.environ["MLXD_STEP_TRACE"] = str(out / f"trace-{name}.jsonl")
        settings = EngineSettings(max_batch_size=args.streams, weights="quantized", **opts)
        engine = Engine(loaded.model, tok, settings)
        engine.start()
        assert engine.ready.wait(900), "warm-up failed"
        prof = cProfile.Profile()
        original = running.Running.step
        profiling = [False]

        def step(self, cuda, _original=original, _prof=prof, _on=profiling):
            if not _on[0]:
                return _original(self, cuda)
            _prof.enable()
            try:
                return _original(self, cuda)
            finally:
                _prof.disable()

        running.Running.step = step  # type: ignore[method-assign]
        try:
            for r in range(args.rounds):
                prompts = [
                    tok.apply_chat_template(messages_for(offset + i), add_generation_prompt=True)
                    for i in range(args.streams)
                ]
                offset += args.streams
                profiling[0] = r == args.rounds - 1
                tokens, seconds = run_round(engine, prompts, args.max_tokens)
                rate = tokens / seconds
                print(f"{name} round {r}: {tokens} tokens in {seconds:.2f} s, {rate:.0f} tok/s")
                if timed is not None:
                    if profiling[0]:
                        for what, (calls, total) in sorted(timed.items(), key=lambda kv: -kv[1][1]):
                            print(f"  synced {what:45} {calls:7d} calls {total * 1e3:10.1f} ms")
                    timed.clear()
        finally:
            running.Running.step = original  # type: ignore[method-assign]
            engine.shutdown(30)
        for key in ("tottime", "cumulative"):
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(key).print_stats(args.top)
            text_out = s.getvalue()
            print(f"--- {name}: by {key}\n{text_out[text_out.find('ncalls') - 3 :]}")
            if out:
                (out / f"profile-{name}-{key}.txt").write_text(text_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
