#!/usr/bin/env python3
"""Where a served mlxd spends its time: the real server (HTTP, routing, prompt cache, CUDA's
attention patches) with cProfile around each engine step and a step trace, under bench.py's
rounds of concurrent chat requests.

    python bench/served_profile.py --model DIR [--streams 64] [--rounds 3] [--max-tokens 128]
        [--variants "full=;kv8=--kv-bits 8"] [--eval] [--top 35] [--out FILE]

Each variant (NAME=mlxd flags) starts ``python bench/served_profile.py --serve ...`` (this file
as a wrapper around ``mlxd``'s main), runs ``--rounds`` rounds (the first unprofiled) and stops
it with SIGTERM; the wrapper writes its report at exit: the rounds' steps by kind
(bench/steptrace.py) and the generation thread's functions by own and cumulative time.
``--eval``: the KV caches' methods and the attention entry point evaluate their inputs before
and their results after each call, timed: which of them the device time is in (this serializes
the step; compare variants with each other, not with a run without it). ``--phases``: mlx-lm's
batch phases (merge, prompt, split, a new batch's first decode step, extend, filter) between
device syncs (a few calls a round).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _eval_timers(totals: dict) -> None:
    import mlx.core as mx
    from mlx_lm.models import cache as mlx_cache

    from mlxd.engine import attention, kvcache

    def arrays(x):
        if isinstance(x, mx.array):
            return [x]
        if isinstance(x, (list, tuple)):
            return [a for item in x for a in arrays(item)]
        if hasattr(x, "keys") and hasattr(x, "offset") and not isinstance(x, dict):
            return arrays([x.keys, x.values]) if x.keys is not None else []
        return []

    def timed(raw, label):
        def call(*a, **k):
            mx.eval(arrays(list(a)) + arrays(list(k.values())))
            t = time.perf_counter()
            result = raw(*a, **k)
            mx.eval(arrays(result) + arrays(list(a[:1])))
            entry = totals.setdefault(label, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t
            return result

        return call

    for cls in (kvcache.QuantizedBatchKVCache, mlx_cache.BatchKVCache, mlx_cache.KVCache):
        for attr in ("update_and_fetch", "finalize", "filter", "extend", "extract", "merge"):
            found = cls.__dict__.get(attr)
            if found is None:
                continue
            if isinstance(found, classmethod):
                call = timed(found.__func__, f"{cls.__name__}.{attr}")
                setattr(cls, attr, classmethod(lambda c, *a, _call=call, **k: _call(c, *a, **k)))
            else:
                setattr(cls, attr, timed(found, f"{cls.__name__}.{attr}"))
    attention._prefill_aware = timed(attention._prefill_aware, "attention (patched entry)")


def _phase_timers(totals: dict) -> None:
    """mlx-lm's batch phases (merge into a prompt batch, prompt, split, the first decode step of
    a new generation batch, extend, filter) timed between device syncs: few calls a round."""
    import importlib

    import mlx.core as mx

    gen = importlib.import_module("mlx_lm.generate")  # the module, not mlx_lm's function

    def timed(raw, label):
        def call(*a, **k):
            mx.synchronize()
            t = time.perf_counter()
            result = raw(*a, **k)
            mx.synchronize()
            entry = totals.setdefault(label, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - t
            return result

        return call

    for cls, attrs in (
        (gen.PromptProcessingBatch, ("__init__", "prompt", "split", "generate", "extend")),
        (gen.GenerationBatch, ("__init__", "extend", "filter", "extract_cache")),
    ):
        for attr in attrs:
            setattr(cls, attr, timed(cls.__dict__[attr], f"{cls.__name__}.{attr}"))


def serve(argv: list[str]) -> int:
    """The wrapper: mlxd's main with the generation thread's steps profiled."""
    import cProfile

    from mlxd import cli
    from mlxd.engine import running

    prof, totals = cProfile.Profile(), {}
    if os.environ.get("PROFILE_EVAL"):
        _eval_timers(totals)
    if os.environ.get("PROFILE_PHASES"):
        _phase_timers(totals)
    if os.environ.get("PROFILE_EMULATE_CUDA"):
        from kv_agreement import emulate_cuda_path

        emulate_cuda_path()
    started = []
    original = running.Running.step
    on = Path(os.environ["PROFILE_ON"])  # the driver touches it when the timed rounds begin

    def step(self, cuda):
        if not on.exists():
            return original(self, cuda)
        if not started:  # the timed round begins: what was timed before is warm-up
            started.append(True)
            totals.clear()
        prof.enable()
        try:
            return original(self, cuda)
        finally:
            prof.disable()

    running.Running.step = step  # type: ignore[method-assign]

    def report() -> None:
        out = io.StringIO()
        for key in ("tottime", "cumulative"):
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats(key).print_stats(int(os.environ["PROFILE_TOP"]))
            text = s.getvalue()
            out.write(f"--- by {key}\n{text[max(text.find('ncalls') - 3, 0) :]}\n")
        for what, (calls, total) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
            out.write(f"  evaluated {what:40} {calls:7d} calls {total * 1e3:10.1f} ms\n")
        Path(os.environ["PROFILE_REPORT"]).write_text(out.getvalue())

    leave = cli._leave  # on CUDA it ends the process with os._exit: report first

    def _leave(code: int) -> int:
        report()
        return leave(code)

    cli._leave = _leave  # type: ignore[assignment]
    return cli.main(argv)


def drive(args) -> int:
    import steptrace

    import bench

    report = []
    port = 18000
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.variants.split(";"):
            name, _, flags = text.partition("=")
            port += 1
            on, rep, trace = (Path(tmp) / f"{name}.{x}" for x in ("on", "txt", "jsonl"))
            env = dict(
                os.environ,
                PROFILE_ON=str(on),
                PROFILE_REPORT=str(rep),
                PROFILE_TOP=str(args.top),
                MLXD_STEP_TRACE=str(trace),
            )
            if args.eval:
                env["PROFILE_EVAL"] = "1"
            if args.phases:
                env["PROFILE_PHASES"] = "1"
            if args.emulate_cuda:
                env["PROFILE_EMULATE_CUDA"] = "1"
            cmd = [sys.executable, __file__, "--serve", args.model, "--port", str(port)]
            srv = bench.ServerProcess(
                name, cmd + flags.split(), port, Path(tmp) / f"{name}.log", env
            )
            srv.start()
            asyncio.run(bench.wait_ready(srv, False, 600))
            lines = [f"=== {name}: mlxd {flags}"]
            for r in range(args.rounds):
                if r == args.rounds - 1:
                    on.touch()
                    trace.write_text("")  # the timed round's steps only
                indices = list(range(1000 * r, 1000 * r + args.streams))
                done = asyncio.run(bench.run_round(port, indices, args.max_tokens, 600))
                tokens, seconds = sum(s["tokens"] for s in done["streams"]), done["wall_s"]
                lines.append(
                    f"round {r}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.0f} tok/s"
                )
            srv.stop()  # SIGTERM: the wrapper writes its report on the way out
            lines.append(steptrace.summarize(str(trace)))
            lines.append(rep.read_text() if rep.exists() else "(no report)")
            report.append("\n".join(lines))
            print(lines[0], *lines[1 : args.rounds + 1], sep="\n", flush=True)
    text = "\n\n".join(report)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        return serve(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--variants", default="full=;kv8=--kv-bits 8")
    p.add_argument("--eval", action="store_true")
    p.add_argument("--phases", action="store_true", help="time mlx-lm's batch phases (synced)")
    p.add_argument(
        "--emulate-cuda",
        action="store_true",
        help="run the engine's CUDA path on this device (kv_agreement.emulate_cuda_path)",
    )
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--out", default="")
    return drive(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
