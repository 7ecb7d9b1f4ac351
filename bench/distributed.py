#!/usr/bin/env python3
"""One model on one device vs the same model across a group, with bench.py's workload.

    python bench/distributed.py --model DIR --backend nccl --ranks 2 [--concurrency 1,32,64]

For each configuration (``one``: a plain mlxd; ``tensor``: ``--backend B --distributed N``;
``pipeline``: the same with ``--pipeline``; ``one-dense``: a plain mlxd serving dense weights, for
the greedy check only: a group on CUDA serves dense weights, while one device's default serves a
lone sequence from the quantized ones, whose sums round differently) this starts mlxd, waits for
/health, then

1. greedy identity: the same greedy requests (bench.py's prompts, one at a time and then all at
   once) whose texts must match the one-device run's, word for word;
2. bench.py's rounds: N simultaneous streaming chat completions per level (aggregate tok/s, TTFT,
   per-stream decode), after a warm-up round;
3. memory: /v1/mlx/status per rank (MLX active and peak bytes).

``--memory-limit`` (per rank) is passed to every configuration that lists it in ``--limited``,
and ``--refusal-check`` also starts one plain mlxd under that limit to show what happens to a
model that does not fit one rank. Each configuration has ``--mode-timeout`` seconds, start
included: one that hangs or fails keeps what it measured and the next one starts. Results go
to --out as JSON and the summary to its .txt twin, both written after each configuration, and
the summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402  (bench.py beside this file: its client, rounds and summaries)

MODES = {
    "one": [],
    "tensor": ["--distributed", "{ranks}", "--backend", "{backend}"],
    "pipeline": ["--distributed", "{ranks}", "--backend", "{backend}", "--pipeline"],
    "one-dense": ["--weights", "dense"],
}
IDENTITY_ONLY = {"one-dense"}  # configurations that only give greedy replies to compare with
REFERENCES = ("one", "one-dense")
IDENTITY_PROMPTS = 4  # bench prompts 9000.. (no overlap with the timed rounds' prompts)
IDENTITY_TOKENS = 64


async def _complete(port: int, index: int, max_tokens: int, timeout: float) -> str:
    payload = {"messages": bench.messages_for(index), "max_tokens": max_tokens, "temperature": 0}
    status, body = await bench.http_request(
        port, "POST", "/v1/chat/completions", payload, timeout=timeout
    )
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
    return json.loads(body)["choices"][0]["message"]["content"]


async def identity(port: int, timeout: float) -> dict:
    indices = [9000 + i for i in range(IDENTITY_PROMPTS)]
    alone = [await _complete(port, i, IDENTITY_TOKENS, timeout) for i in indices]
    together = await asyncio.gather(
        *(_complete(port, i, IDENTITY_TOKENS, timeout) for i in indices)
    )
    return {"alone": alone, "together": list(together)}


async def measure(srv: bench.ServerProcess, plan: dict, max_tokens: int, args, out: dict) -> None:
    """Fill ``out`` as the measurements come (a timeout keeps what came before it)."""
    out["startup"] = await bench.wait_ready(srv, False, args.startup_timeout)
    bench.log(f"{srv.name}: ready after {out['startup']['ready_s']:.1f}s")
    out["identity"] = await identity(srv.port, args.request_timeout)
    for level in [] if srv.name in IDENTITY_ONLY else plan["levels"]:
        c = level["concurrency"]
        for indices in level["warmup"]:
            await bench.run_round(srv.port, indices, max_tokens, args.request_timeout)
        rounds = [
            await bench.run_round(srv.port, indices, max_tokens, args.request_timeout)
            for indices in level["timed"]
        ]
        s = bench.summarize(rounds)
        out["levels"][str(c)] = s
        bench.log(
            f"{srv.name}: c={c}: {s['aggregate_tok_s'] or 0:.1f} tok/s, TTFT p50 "
            f"{(s['ttft_s_p50'] or 0) * 1e3:.0f} ms, decode/stream "
            f"{s['decode_tok_s_p50'] or 0:.1f}, {s['failed']} failed"
        )
    status, body = await bench.http_request(srv.port, "GET", "/v1/mlx/status", timeout=10)
    if status == 200:
        st = json.loads(body)
        out["memory"], out["group"] = st.get("memory"), st.get("group")


def stop_group(srv: bench.ServerProcess, result: dict) -> float | None:
    """As ``mlxd --stop`` does: SIGTERM to rank 0 only, which stops the others; the seconds until
    the launcher (and so every rank) has exited."""
    ranks = (result.get("group") or {}).get("ranks") or []
    if not ranks or srv.proc is None:
        return None
    t = time.perf_counter()
    os.kill(ranks[0]["pid"], signal.SIGTERM)
    try:
        srv.proc.wait(30)
    except subprocess.TimeoutExpired:
        return None
    return time.perf_counter() - t


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def mlxd_command(args, mode: str, port: int, limited: bool) -> list[str]:
    cmd = [sys.executable, "-m", "mlxd", args.model, "--port", str(port)]
    cmd += ["--max-batch-size", str(args.max_batch_size)]
    if "--weights" not in MODES[mode]:
        cmd += ["--weights", args.weights]
    cmd += [a.format(ranks=args.ranks, backend=args.backend) for a in MODES[mode]]
    if limited and args.memory_limit:
        cmd += ["--memory-limit", args.memory_limit]
    return cmd


def run_mode(args, mode: str, plan: dict, log_dir: Path) -> dict:
    port = bench.free_port()
    cmd = mlxd_command(args, mode, port, mode in args.limited.split(","))
    srv = bench.ServerProcess(mode, cmd, port, log_dir / f"{mode}.log", dict(os.environ))
    bench.log(f"starting {mode}: {' '.join(cmd)}")
    srv.start()
    started = time.perf_counter()
    result: dict = {"levels": {}}
    try:
        work = measure(srv, plan, args.max_tokens, args, result)
        asyncio.run(asyncio.wait_for(work, args.mode_timeout))
        result["stop_s"] = stop_group(srv, result)
    except Exception as e:
        why = f"timed out after {args.mode_timeout:.0f}s" if isinstance(e, TimeoutError) else e
        bench.log(f"{mode} FAILED: {why}\n{srv.log_tail()}")
        result.update(error=str(why), log_tail=srv.log_tail(40))
    finally:
        srv.stop()
    result["cmd"], result["wall_s"] = cmd, time.perf_counter() - started
    return result


async def _refusal(port: int) -> dict:
    payload = {"messages": bench.messages_for(1), "max_tokens": 16, "temperature": 0}
    status, body = await bench.http_request(port, "POST", "/v1/chat/completions", payload, 120)
    return {"status": status, "body": body[:400].decode(errors="replace")}


def refusal_check(args, log_dir: Path) -> dict:
    """A plain mlxd with the per-rank --memory-limit: what one device does with this model."""
    port = bench.free_port()
    cmd = mlxd_command(args, "one", port, True)
    log_path = log_dir / "one-limited.log"
    srv = bench.ServerProcess("one-limited", cmd, port, log_path, dict(os.environ))
    srv.start()
    try:

        async def go() -> dict:
            await bench.wait_ready(srv, False, args.startup_timeout)
            return await _refusal(port)

        result = asyncio.run(go())
    except Exception as e:
        result = {"error": str(e), "log_tail": srv.log_tail(20)}
    finally:
        srv.stop()
    result["cmd"] = cmd
    return result


def summary(res: dict) -> str:
    lines = []
    one = res["modes"].get("one", {})
    for mode, r in res["modes"].items():
        if "error" in r:
            lines.append(f"{mode}: FAILED {r['error'][:200]} (what it measured before: below)")
        lines += identity_lines(mode, r, res["modes"])
        if r.get("stop_s") is not None:
            lines.append(f"  the group stopped {r['stop_s']:.1f}s after SIGTERM to rank 0")
        for c, s in r.get("levels", {}).items():
            base = one.get("levels", {}).get(c, {})
            ratio = bench.ratio(s["aggregate_tok_s"], base.get("aggregate_tok_s"))
            lines.append(
                f"  c={c}: {s['aggregate_tok_s'] or 0:.1f} tok/s ({bench.fx(ratio)} one device), "
                f"TTFT p50 {bench.ms(s['ttft_s_p50'])} ms p95 {bench.ms(s['ttft_s_p95'])} ms, "
                f"decode/stream {s['decode_tok_s_p50'] or 0:.1f} tok/s, {s['failed']} failed"
            )
    if "refusal" in res:
        lines.append(f"one device under --memory-limit {res['memory_limit']}: {res['refusal']}")
    return "\n".join(lines)


def identity_lines(mode: str, r: dict, modes: dict) -> list[str]:
    """How this configuration's greedy replies compare with each one-device reference's."""
    lines = []
    for ref in REFERENCES:
        theirs = modes.get(ref, {}).get("identity")
        if ref == mode or "identity" not in r or not theirs:
            continue
        for k in ("alone", "together"):
            mine, base = r["identity"][k], theirs[k]
            prefixes = [f"{common_prefix(a, b)}/{len(b)}" for a, b in zip(mine, base, strict=False)]
            same = sum(a == b for a, b in zip(mine, base, strict=False))
            lines.append(
                f"{mode}: greedy text {k} ({IDENTITY_TOKENS} tokens) vs {ref}: {same}/{len(base)} "
                f"identical (common prefix, chars: {', '.join(prefixes)})"
            )
    return lines


def write(out: Path, res: dict) -> str:
    out.write_text(json.dumps(res, indent=1, default=str))
    text = summary(res)
    out.with_suffix(".txt").write_text(text + "\n")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default="nccl")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--modes", default="one,tensor,pipeline")
    p.add_argument("--concurrency", default="1,32,64")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup-rounds", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--weights", default="auto", help="mlxd --weights for every mode")
    p.add_argument("--memory-limit", help="per rank, for the modes in --limited")
    p.add_argument("--limited", default="tensor,pipeline")
    p.add_argument("--refusal-check", action="store_true")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--mode-timeout", type=float, default=900.0, help="seconds per configuration")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    # A timeout's SIGTERM unwinds like an error, so each server's finally stops its processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(args.out)
    log_dir = out.parent / "logs"
    concurrency = [int(x) for x in args.concurrency.split(",")]
    plan = bench.make_plan(concurrency, args.rounds, args.warmup_rounds)
    res: dict = {"config": vars(args), "modes": {}, "memory_limit": args.memory_limit}
    for mode in args.modes.split(","):
        res["modes"][mode] = run_mode(args, mode, plan, log_dir)
        write(out, res)
    if args.refusal_check and args.memory_limit:
        res["refusal"] = refusal_check(args, log_dir)
    print(write(out, res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
