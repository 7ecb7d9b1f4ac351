#!/usr/bin/env python3
"""What the front end of --models costs and what idle unloading gives back, on one model.

    python bench/router_overhead.py [--model FILE|DIR] [--tokens 64] [--rounds 5] [--out FILE]

1. Hop overhead: ``mlxd MODEL`` (direct) and ``mlxd --models DIR --preload ID`` (through the front
   end to a worker), both running, same settings; batch-1 streamed completions, alternating
   direct / routed, ``--rounds`` each. Decode tok/s = (completion tokens - 1) / (last token - first
   token); TTFT from the request. The end of sequence is banned so every request runs --tokens.
2. Cold start through the front end: POST /admin/unload, then time a request to its first token
   (worker spawn, import, load, warm-up, prefill), ``--cold`` times.
3. Idle unload, memory before and after: the direct server again with --idle-unload 2 (MLX active
   memory from /v1/mlx/status, RSS from /proc), and the routed worker (RSS, MLX active) vs none.

Both servers use --weights quantized (no calibration run at start; the same engine either way).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BANNED = {"0": -100, "1": -100, "2": -100}  # SmolLM2's <|endoftext|>, <|im_start|>, <|im_end|>
COMMON = ["--weights", "quantized", "--log-level", "warning", "--max-batch-size", "8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, body: dict | None = None, method: str | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request(
        method or ("POST" if body is not None else "GET"),
        path,
        json.dumps(body) if body else None,
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else None


def wait_health(port: int, proc: subprocess.Popen, key: str = "status", want: str = "ok") -> None:
    while True:
        assert proc.poll() is None, f"server on {port} exited with {proc.returncode}"
        try:
            status, body = get(port, "/health")
            if status == 200 and body.get(key) == want:
                return
        except OSError:
            pass
        time.sleep(0.2)


def stream(port: int, model: str, tokens: int) -> dict:
    body = {
        "model": model,
        "prompt": "Once upon a time, in a small village by the sea,",
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": BANNED,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    stamps, usage = [], None
    while line := resp.readline():
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]
        if event["choices"] and event["choices"][0]["text"]:
            stamps.append(time.perf_counter())
    conn.close()
    n = usage["completion_tokens"]
    return {
        "ttft_s": stamps[0] - started,
        "decode_tok_s": (n - 1) / (stamps[-1] - stamps[0]),
        "tokens": n,
    }


def rss(pid: int | None) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, TypeError):
        return None


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


def start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mlxd", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cold", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    model = Path(args.model).resolve()
    work = Path(tempfile.mkdtemp(prefix="mlxd-router-bench-"))
    (work / "models").mkdir()
    (work / "models" / model.name).symlink_to(model)
    model_id = model.stem if model.suffix == ".gguf" else model.name
    env_pid = ["--pid-file", str(work / "{port}.pid")]
    direct_port, front_port = free_port(), free_port()
    procs = [
        start([str(model), "--port", str(direct_port), *env_pid, *COMMON], work / "direct.log"),
        start(
            [
                "--models",
                str(work / "models"),
                "--preload",
                model_id,
                "--port",
                str(front_port),
                *env_pid,
                *COMMON,
            ],
            work / "front.log",
        ),
    ]
    report: dict = {"model": str(model), "tokens": args.tokens, "rounds": args.rounds}
    try:
        wait_health(direct_port, procs[0])
        wait_health(front_port, procs[1])
        while get(front_port, "/health")[1]["models"][model_id] != "ready":
            time.sleep(0.2)
        for port in (direct_port, front_port):
            stream(port, model_id, 8)  # warm-up
        runs: dict[str, list[dict]] = {"direct": [], "routed": []}
        for _ in range(args.rounds):
            runs["direct"].append(stream(direct_port, model_id, args.tokens))
            runs["routed"].append(stream(front_port, model_id, args.tokens))
        for name, rs in runs.items():
            report[name] = {
                "decode_tok_s_median": statistics.median(r["decode_tok_s"] for r in rs),
                "ttft_ms_median": 1000 * statistics.median(r["ttft_s"] for r in rs),
                "runs": rs,
            }
        report["routed_over_direct"] = (
            report["routed"]["decode_tok_s_median"] / report["direct"]["decode_tok_s_median"]
        )
        worker = next(
            m for m in get(front_port, "/admin/status")[1]["models"] if m["id"] == model_id
        )
        report["routed_memory_loaded"] = {
            "worker_rss": worker["memory"]["rss_bytes"],
            "worker_mlx_active": worker["memory"]["mlx_active_bytes"],
            "front_end_rss": rss(procs[1].pid),
        }
        colds = []
        for _ in range(args.cold):
            get(front_port, "/admin/unload", {"model": model_id})
            colds.append(stream(front_port, model_id, 4)["ttft_s"])
        report["cold_ttft_s"] = colds
        get(front_port, "/admin/unload", {"model": model_id})
        report["routed_memory_unloaded"] = {"worker_rss": None, "front_end_rss": rss(procs[1].pid)}
        procs[0].terminate()
        procs[0].wait(60)
        # One model, --idle-unload 2: memory loaded vs unloaded, in the same process.
        idle_port = free_port()
        procs[0] = start(
            [str(model), "--port", str(idle_port), "--idle-unload", "2", *env_pid, *COMMON],
            work / "idle.log",
        )
        wait_health(idle_port, procs[0], "state", "ready")
        stream(idle_port, model_id, 16)
        loaded = get(idle_port, "/v1/mlx/status")[1]["memory"], rss(procs[0].pid)
        wait_health(idle_port, procs[0], "state", "unloaded")
        unloaded = get(idle_port, "/v1/mlx/status")[1]["memory"], rss(procs[0].pid)
        t0 = time.perf_counter()
        first = stream(idle_port, model_id, 4)["ttft_s"]
        report["single_idle_unload"] = {
            "loaded": {
                "mlx_active": loaded[0]["active_bytes"],
                "mlx_cache": loaded[0]["cache_bytes"],
                "rss": loaded[1],
            },
            "unloaded": {
                "mlx_active": unloaded[0]["active_bytes"],
                "mlx_cache": unloaded[0]["cache_bytes"],
                "rss": unloaded[1],
            },
            "reload_ttft_s": first,
            "reload_wall_s": time.perf_counter() - t0,
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    d, r = report["direct"], report["routed"]
    print(f"model {model.name}, {args.tokens} tokens, {args.rounds} rounds each, alternating")
    print(
        f"  direct: decode {d['decode_tok_s_median']:.2f} tok/s, TTFT {d['ttft_ms_median']:.0f} ms"
    )
    print(
        f"  routed: decode {r['decode_tok_s_median']:.2f} tok/s, TTFT {r['ttft_ms_median']:.0f} ms"
    )
    print(f"  routed / direct decode: {report['routed_over_direct']:.4f}")
    print(
        f"  cold request -> first token through the front end: {', '.join(f'{s:.2f} s' for s in report['cold_ttft_s'])}"
    )
    m = report["routed_memory_loaded"]
    print(
        f"  routed, loaded: worker RSS {mib(m['worker_rss'])}, MLX active {mib(m['worker_mlx_active'])}, "
        f"front end RSS {mib(m['front_end_rss'])}; unloaded: no worker, front end RSS "
        f"{mib(report['routed_memory_unloaded']['front_end_rss'])}"
    )
    s = report["single_idle_unload"]
    print(
        f"  one model, --idle-unload: MLX active {mib(s['loaded']['mlx_active'])} -> "
        f"{mib(s['unloaded']['mlx_active'])}, MLX cache {mib(s['loaded']['mlx_cache'])} -> "
        f"{mib(s['unloaded']['mlx_cache'])}, RSS {mib(s['loaded']['rss'])} -> "
        f"{mib(s['unloaded']['rss'])}; reload to first token {s['reload_ttft_s']:.2f} s"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
