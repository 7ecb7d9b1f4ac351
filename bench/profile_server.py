#!/usr/bin/env python3
"""Where a loaded mlxd spends its time: py-spy on the server while N streams decode.

    python bench/profile_server.py --model DIR [--concurrency 64] [--rounds 3] [--max-tokens 128]
                                   [--out DIR] [--mlxd-args "..."] [--label NAME]

Starts ``python -m mlxd DIR`` (its own process group), waits for /health 200, runs one untimed
round, then the timed rounds while ``py-spy record`` samples the server twice over: all threads
with idle samples kept (wall time: how long the generation thread waits in ``mx.eval`` for the
device versus runs Python), then only the thread holding the GIL (who keeps the others waiting).
Writes the raw py-spy stacks and a summary (per thread: inclusive and self time of the top
frames) to ``--out``, and prints the rounds' throughput. Needs py-spy (``pip install py-spy``) and
the right to ptrace the server (root, or kernel.yama.ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the same client, prompts and statistics)


def summarize(raw: Path, top: int = 40) -> str:
    """py-spy's raw (collapsed) stacks -> per-thread inclusive and self counts."""
    threads: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    self_: collections.Counter = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread, calls = frames[0], frames[1:]
        threads[thread] += int(n)
        for f in set(calls):
            incl[thread, f] += int(n)
        if calls:
            self_[thread, calls[-1]] += int(n)
    total = sum(threads.values()) or 1
    out = [f"{raw.name}: {total} samples"]
    # The two that matter first (with --idle every thread gets the same number of samples).
    order = sorted(
        threads, key=lambda t: ("mlxd-generate" not in t, "MainThread" not in t, -threads[t])
    )
    for thread in order[:3]:
        n = threads[thread]
        out.append(f"\n== {thread}: {n} samples ({100 * n / total:.0f}%)")
        out.append("  inclusive:")
        rows = sorted(((v, f) for (t, f), v in incl.items() if t == thread), reverse=True)
        out += [f"  {v:7d} {100 * v / n:5.1f}%  {f[:140]}" for v, f in rows[:top]]
        out.append("  self:")
        rows = sorted(((v, f) for (t, f), v in self_.items() if t == thread), reverse=True)
        out += [f"  {v:7d} {100 * v / n:5.1f}%  {f[:140]}" for v, f in rows[: top // 2]]
    return "\n".join(out)


async def rounds(port: int, c: int, n: int, max_tokens: int, start: int) -> list[str]:
    lines = []
    for r in range(n):
        res = await bench.run_round(
            port, list(range(start + r * c, start + (r + 1) * c)), max_tokens, 900
        )
        s = bench.summarize([res])
        lines.append(
            f"c={c} round {r}: {s['aggregate_tok_s']:.1f} tok/s aggregate, decode/stream "
            f"{s['decode_tok_s_p50']:.1f}, TTFT p50 {s['ttft_s_p50'] * 1e3:.0f} ms, ITL "
            f"p50 {s['itl_s_p50'] * 1e3:.1f} ms p99 {s['itl_s_p99'] * 1e3:.1f} ms, "
            f"{s['failed']} failed"
        )
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", default="bench/profile")
    p.add_argument("--label", default="mlxd")
    p.add_argument("--mlxd-args", default="")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    a = p.parse_args(argv)
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("profile_server: py-spy not found (pip install py-spy)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    port = bench.free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlxd",
        a.model,
        "--host",
        bench.HOST,
        "--port",
        str(port),
        "--max-batch-size",
        str(max(a.concurrency, 1)),
        "--no-daemon",
        "--pid-file",
        str(out / f"{a.label}.pid"),
    ] + shlex.split(a.mlxd_args)
    srv = bench.ServerProcess(a.label, cmd, port, out / f"{a.label}.log", dict(os.environ))
    srv.start()
    report = [f"{a.label}: {shlex.join(cmd)}"]
    try:
        ready = asyncio.run(bench.wait_ready(srv, False, 900))
        report.append(f"ready after {ready['ready_s']:.1f}s")
        asyncio.run(rounds(port, a.concurrency, 1, a.max_tokens, 10_000))  # untimed
        for mode, flags in (("wall", ["--idle"]), ("gil", ["--gil"])):
            raw = out / f"{a.label}-{mode}.txt"
            rec = subprocess.Popen(
                [
                    spy,
                    "record",
                    "-p",
                    str(srv.proc.pid),
                    "-r",
                    str(a.rate),
                    "--threads",
                    "-f",
                    "raw",
                    "-o",
                    str(raw),
                    "--nonblocking",
                ]
                + flags,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(1.0)
            t = time.perf_counter()
            report.append(f"-- {mode} profile")
            report += asyncio.run(
                rounds(
                    port,
                    a.concurrency,
                    a.rounds,
                    a.max_tokens,
                    20_000 if mode == "wall" else 30_000,
                )
            )
            report.append(f"   ({time.perf_counter() - t:.1f}s)")
            rec.send_signal(2)  # SIGINT: py-spy writes its output and exits
            try:
                _, err = rec.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                rec.kill()
                err = b"py-spy did not stop"
            if raw.exists():
                report.append(summarize(raw))
            else:
                report.append(f"no {mode} profile: {err.decode(errors='replace')[-500:]}")
    finally:
        srv.stop()
    text = "\n".join(report)
    (out / f"{a.label}-summary.txt").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
