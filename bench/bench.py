#!/usr/bin/env python3
"""mlxd vs mlx_lm.server vs raw mlx-lm, side by side, on one model and one machine.

    python bench/bench.py [--model DIR|FILE.gguf] [--concurrency 1,4,8,16] [--max-tokens N] ...

1. raw mlx-lm: batch-1 greedy decode with ``generate_step`` in a separate process (warm-up first);
   decode tok/s excludes prefill and the first token.
2. mlxd (``python -m mlxd DIR --port P --max-batch-size 16``), ready at GET /health 200.
3. mlx_lm.server (``python -m mlx_lm server --model DIR --port Q`` with its defaults), ready once it
   answers a tiny request (its /health says ok before the model is loaded).

The two servers run one after the other (never together) on the same MLX directory. After a
server is ready the first bench-shaped request is timed on its own ("first request after ready"),
a second one warms it up, then each concurrency level runs ``--rounds`` rounds of N simultaneous
streaming chat completions (``stream: true``, ``temperature: 0``, ``max_tokens``, usage chunk on).
Every request has its own prompt whose text differs from the second token on, so neither server's
prompt cache can skip a prefill: what is measured is scheduling, prefill and decode.

The client is stdlib asyncio on raw sockets (one coroutine per stream), light enough to share the
machine's cores with the server. Results: a table on stdout and JSON in --out.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import refservers
import reportmore
import workloads
from benchclient import (
    EXTRA_FIELDS,
    HOST,
    chat_payload,
    http_request,
    stream_chat,
    stream_stats,
    summarize,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# Defaults that depend on the machine: a 2-core CPU decodes SmolLM2 at ~8 tok/s *in total* (MLX's
# CPU quantized matmul costs about the same per token at any batch size), so a full CPU run keeps
# outputs short and does one round per level; a GPU run does more.
CPU_DEFAULTS = {"max_tokens": 48, "rounds": 1, "warmup_rounds": 0, "raw_reps": 2}
GPU_DEFAULTS = {"max_tokens": 128, "rounds": 3, "warmup_rounds": 1, "raw_reps": 3}
# The workloads (workloads.py): issue 15's sizes on a GPU (a ~1000-token system prompt shared by
# 32 streams; 16 prompts of ~1.5k tokens while 32 streams decode); a CPU gets a small version.
WORKLOAD_GPU = {
    "shared_streams": 32,
    "prefix_words": 750,
    "long_decoders": 32,
    "decode_tokens": 384,
    "long_requests": 16,
    "long_words": 1100,
}
WORKLOAD_CPU = {
    "shared_streams": 8,
    "prefix_words": 150,
    "long_decoders": 8,
    "decode_tokens": 40,
    "long_requests": 2,
    "long_words": 150,
}

TARGETS_NOTE = "targets (informational: issues 5 and 15's; the exit status does not depend on them)"
MEMORY_POLL_S = 0.5

_ADJ = [
    "brave",
    "tiny",
    "ancient",
    "clumsy",
    "curious",
    "gentle",
    "lonely",
    "restless",
    "silver",
    "wise",
]
_NOUN = [
    "dragon",
    "robot",
    "fox",
    "lighthouse keeper",
    "baker",
    "astronaut",
    "whale",
    "gardener",
    "clockmaker",
    "owl",
]
_PLACE = [
    "in a mountain village",
    "on a distant moon",
    "under the sea",
    "in a busy city",
    "in a haunted forest",
    "on a pirate ship",
    "in a desert oasis",
    "at a winter fair",
    "in a floating castle",
    "beside a quiet river",
]


def messages_for(i: int) -> list[dict]:
    """Request i's prompt: unique from its first words (no shared prefix for a prompt cache to
    reuse beyond the chat template's opening), the same for every server, asking for long text."""
    adj, noun, place = _ADJ[i % 10], _NOUN[(i // 10) % 10], _PLACE[(i // 100) % 10]
    return [
        {"role": "system", "content": f"{i}. You write long stories."},
        {"role": "user", "content": f"Write a long story about a {adj} {noun} {place}."},
    ]


TINY_MESSAGES = [{"role": "user", "content": "Hi"}]


# ----------------------------------------------------------------------------- processes

_CHILDREN: list[ServerProcess] = []


def _stop_all() -> None:
    for child in list(_CHILDREN):
        child.stop()


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the servers


atexit.register(_stop_all)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server in its own process group, killed (group and all) on stop()."""

    def __init__(
        self, name: str, cmd: list[str], port: int, log_path: Path, env: dict, cwd: Path = ROOT
    ) -> None:
        self.name, self.cmd, self.port, self.log_path, self.env = name, cmd, port, log_path, env
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        _CHILDREN.append(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self in _CHILDREN:
            _CHILDREN.remove(self)

    def log_tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class MemoryWatch:
    """Peak memory of one server process, sampled while it runs: resident set (the kernel's own
    high-water mark, VmHWM, read at the end, so nothing between samples is missed) and, on CUDA,
    device memory in use (nvidia-smi's memory.used on the GPU, minus what was in use before the
    server started, polled every MEMORY_POLL_S: only one server runs at a time)."""

    def __init__(self, pid: int, cuda: bool) -> None:
        self.pid, self.cuda = pid, cuda
        self.gpu_base = gpu_used_bytes() if cuda else None
        self.gpu_peak = None
        self.rss_peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(MEMORY_POLL_S):
            self.sample()

    def sample(self) -> None:
        hwm = vm_hwm_bytes(self.pid)
        if hwm is not None:
            self.rss_peak = hwm
        if self.cuda and self.gpu_base is not None:
            used = gpu_used_bytes()
            if used is not None:
                self.gpu_peak = max(self.gpu_peak or 0, used - self.gpu_base)

    def finish(self) -> dict:
        """Stop polling; call while the process still lives (VmHWM goes with it)."""
        self._stop.set()
        self._thread.join(5)
        self.sample()
        return {"rss_peak_bytes": self.rss_peak, "gpu_used_peak_bytes": self.gpu_peak}


def vm_hwm_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpu_used_bytes() -> int | None:
    """Device memory in use on GPU 0 (nvidia-smi), or None where that cannot be read."""
    try:
        p = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return int(p.stdout.split()[0]) * 1024 * 1024 if p.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


# ----------------------------------------------------------------------------- one server


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def wait_ready(srv: ServerProcess, tiny_request: bool, timeout: float) -> dict:
    """Poll /health (and for mlx_lm.server, then a 1-token request) until it answers."""
    out = {"health_s": None, "ready_s": None, "tiny_request_s": None}
    deadline = time.perf_counter() + timeout
    while True:
        if not srv.alive():
            raise RuntimeError(
                f"{srv.name} exited (rc {srv.proc.returncode}) before it was ready;"
                f" log {srv.log_path}:\n{srv.log_tail()}"
            )
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"{srv.name} not ready after {timeout:.0f}s; log {srv.log_path}:\n{srv.log_tail()}"
            )
        try:
            status, _ = await http_request(srv.port, "GET", "/health", timeout=5)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            status = None
        if status == 200:
            break
        await asyncio.sleep(0.2)
    out["health_s"] = time.perf_counter() - srv.started_at
    if tiny_request:
        t = time.perf_counter()
        payload = {**EXTRA_FIELDS, "messages": TINY_MESSAGES, "max_tokens": 1, "temperature": 0}
        status, body = await http_request(
            srv.port, "POST", "/v1/chat/completions", payload, timeout=max(deadline - t, 1)
        )
        if status != 200:
            raise RuntimeError(f"{srv.name}: tiny request got HTTP {status}: {body[:300]!r}")
        out["tiny_request_s"] = time.perf_counter() - t
    out["ready_s"] = time.perf_counter() - srv.started_at
    return out


async def run_round(port: int, indices: list[int], max_tokens: int, timeout: float) -> dict:
    t0 = time.perf_counter()
    raw = await asyncio.gather(
        *(stream_chat(port, chat_payload(messages_for(i), max_tokens), timeout) for i in indices)
    )
    wall = max(r["t_end"] for r in raw) - t0
    return {"concurrency": len(indices), "wall_s": wall, "streams": [stream_stats(r) for r in raw]}


async def bench_server(
    srv: ServerProcess, tiny_ready: bool, plan: dict, max_tokens: int, args
) -> dict:
    result = {"name": srv.name, "cmd": srv.cmd, "log": str(srv.log_path), "levels": {}}
    result["startup"] = await wait_ready(srv, tiny_ready, args.startup_timeout)
    log(f"{srv.name}: ready after {result['startup']['ready_s']:.1f}s")

    for key, idx in (("first_request", plan["first"]), ("warmup_request", plan["warmup"])):
        r = stream_stats(
            await stream_chat(
                srv.port, chat_payload(messages_for(idx), max_tokens), args.request_timeout
            )
        )
        r.pop("gaps_s")
        result[key] = r
        if not r["ok"]:
            raise RuntimeError(f"{srv.name}: {key} failed: {r['error']}")
        log(
            f"{srv.name}: {key}: TTFT {r['ttft_s'] * 1e3:.0f} ms, {r['tokens']} tokens in "
            f"{r['total_s']:.2f}s"
        )

    for level in plan["levels"]:
        c = level["concurrency"]
        for indices in level["warmup"]:
            await run_round(srv.port, indices, max_tokens, args.request_timeout)
        rounds = []
        for indices in level["timed"]:
            rnd = await run_round(srv.port, indices, max_tokens, args.request_timeout)
            rounds.append(rnd)
            if not srv.alive():
                raise RuntimeError(
                    f"{srv.name} died during the c={c} round; log {srv.log_path}:\n{srv.log_tail()}"
                )
        s = summarize(rounds)
        s["rounds"] = [
            {
                "wall_s": r["wall_s"],
                "streams": [{k: v for k, v in st.items() if k != "gaps_s"} for st in r["streams"]],
            }
            for r in rounds
        ]
        result["levels"][str(c)] = s
        log(
            f"{srv.name}: c={c}: {s['aggregate_tok_s'] or 0:.2f} tok/s aggregate, "
            f"TTFT p50 {(s['ttft_s_p50'] or 0) * 1e3:.0f} ms, {s['failed']} failed"
        )
    if srv.name in args.workload_servers:
        result["workloads"] = await run_workloads(srv, max_tokens, args)
    # MLX's own peak, where the server reports it (mlxd's status endpoint; mlx_lm.server has none).
    try:
        status, body = await http_request(srv.port, "GET", "/v1/mlx/status", timeout=10)
        if status == 200:
            report_ = json.loads(body)
            mem = report_.get("memory") or {}
            result["memory"] = {"mlx_peak_bytes": mem.get("peak_bytes")}
            result["status"] = report_
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
        pass
    return result


async def run_workloads(srv: ServerProcess, max_tokens: int, args) -> dict:
    w, out = args.workload, {}
    if "shared-prefix" in args.workloads:
        log(f"{srv.name}: shared-prefix workload ({w['shared_streams']} streams)")
        out["shared_prefix"] = await workloads.shared_prefix(
            srv.port,
            w["shared_streams"],
            w["prefix_words"],
            max_tokens,
            args.workload_rounds,
            args.request_timeout,
        )
        sp = out["shared_prefix"]
        log(
            f"{srv.name}: shared prefix TTFT p50 {sp['shared']['ttft_s_p50'] or 0:.3f}s vs "
            f"distinct {sp['distinct']['ttft_s_p50'] or 0:.3f}s"
        )
    if "long-prompt" in args.workloads:
        log(
            f"{srv.name}: long-prompt workload ({w['long_requests']} long, {w['long_decoders']} decoding)"
        )
        out["long_prompts"] = await workloads.long_prompts(
            srv.port,
            w["long_decoders"],
            w["decode_tokens"],
            w["long_requests"],
            w["long_words"],
            max_tokens,
            args.request_timeout,
        )
        lp = out["long_prompts"]["itl_from_arrival_s"]
        log(f"{srv.name}: decoders' ITL after the long prompts p50 {lp['p50']}, p99 {lp['p99']}")
    return out


async def restart_probe(srv: ServerProcess, max_tokens: int, args) -> dict:
    """A second start of a server (same kernel caches, same calibration store): ready time and
    its first request."""
    out = {"startup": await wait_ready(srv, False, args.startup_timeout)}
    r = stream_stats(
        await stream_chat(srv.port, chat_payload(messages_for(0), max_tokens), args.request_timeout)
    )
    r.pop("gaps_s")
    out["first_request"] = r
    return out


def run_server(
    name: str,
    cmd: list[str],
    port: int,
    log_path: Path,
    env: dict,
    tiny_ready: bool,
    plan: dict,
    max_tokens: int,
    args,
    cwd: Path = ROOT,
) -> dict:
    srv = ServerProcess(name, cmd, port, log_path, env, cwd)
    log(f"starting {name}: {shlex.join(cmd)}")
    srv.start()
    watch = MemoryWatch(srv.proc.pid, args.cuda)
    try:
        result = asyncio.run(bench_server(srv, tiny_ready, plan, max_tokens, args))
    except Exception as e:
        log(f"{name} FAILED: {e}")
        result = {"name": name, "cmd": cmd, "log": str(log_path), "error": str(e), "levels": {}}
    finally:
        memory = watch.finish()
        srv.stop()
    result["memory"] = {**memory, **result.get("memory", {})}
    return result


# ----------------------------------------------------------------------------- setup


def with_kernel_cache(env: dict, cache_root: str | None, name: str) -> dict:
    """On CUDA, give one process its own empty kernel caches (MLX's PTX cache and the driver's),
    so no process inherits kernels another one compiled: every first request is a cold one."""
    if cache_root is None:
        return env
    env = dict(env)
    env["MLX_PTX_CACHE_DIR"] = os.path.join(cache_root, name, "ptx")
    env["CUDA_CACHE_PATH"] = os.path.join(cache_root, name, "nv")
    return env


def helper(args_list: list[str], env: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(BENCH_DIR / "raw_decode.py")] + args_list
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd[:3])} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def mlxd_cwd(args) -> Path:
    """`python -m` puts the working directory first on sys.path: run mlxd from the tree asked for."""
    return Path(args.mlxd_pythonpath).resolve() if args.mlxd_pythonpath else ROOT


def prepare_model(args, env: dict) -> tuple[Path, str | None]:
    """The MLX directory both servers and raw mlx-lm load; a .gguf is exported first (once)."""
    model = Path(args.model).expanduser().resolve()
    if model.is_dir():
        return model, None
    if model.suffix != ".gguf" or not model.is_file():
        raise SystemExit(f"bench: --model must be an MLX directory or a .gguf file: {model}")
    out = (
        Path(args.export_dir).resolve() if args.export_dir else model.with_name(model.stem + "-mlx")
    )
    cfg = out / "config.json"
    if cfg.is_file() and cfg.stat().st_mtime >= model.stat().st_mtime:
        return out, str(model)
    part = out.with_name(out.name + ".part")
    subprocess.run(["rm", "-rf", str(part)], check=True)
    log(f"exporting {model.name} to {out} (mlxd --export-mlx)")
    p = subprocess.run(
        [sys.executable, "-m", "mlxd", str(model), "--export-mlx", str(part)],
        capture_output=True,
        text=True,
        env=env,
        cwd=mlxd_cwd(args),
    )
    if p.returncode != 0:
        raise SystemExit(f"bench: export failed:\n{p.stdout}{p.stderr}")
    subprocess.run(["rm", "-rf", str(out)], check=True)
    os.replace(part, out)
    return out, str(model)


def mlxd_command(args, model_dir: Path, port: int, log_dir: Path, help_text: str, extra: str):
    cmd = [sys.executable, "-m", "mlxd", str(model_dir), "--host", HOST, "--port", str(port)]
    if args.max_batch_size is not None:
        cmd += ["--max-batch-size", str(args.max_batch_size)]
    if "--pid-file" in help_text:
        cmd += ["--pid-file", str(log_dir / f"mlxd-{port}.pid")]
    return cmd + shlex.split(args.mlxd_args) + shlex.split(extra)


def run_probe(name, cmd, port, log_path, env, max_tokens, args, cwd) -> dict:
    srv = ServerProcess(name, cmd, port, log_path, env, cwd)
    log(f"starting {name}: {shlex.join(cmd)}")
    srv.start()
    try:
        out = asyncio.run(restart_probe(srv, max_tokens, args))
        log(f"{name}: ready after {out['startup']['ready_s']:.1f}s")
        return out
    except Exception as e:
        log(f"{name} FAILED: {e}")
        return {"error": str(e)}
    finally:
        srv.stop()


def mlxd_flags(env: dict, cwd: Path) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "mlxd", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    if p.returncode != 0:
        raise RuntimeError(f"python -m mlxd --help failed:\n{p.stderr[-2000:]}")
    return p.stdout


def make_plan(concurrency: list[int], rounds: int, warmup_rounds: int) -> dict:
    counter = iter(range(10**6))
    plan = {"first": next(counter), "warmup": next(counter), "levels": []}
    for c in concurrency:
        plan["levels"].append(
            {
                "concurrency": c,
                "warmup": [[next(counter) for _ in range(c)] for _ in range(warmup_rounds)],
                "timed": [[next(counter) for _ in range(c)] for _ in range(rounds)],
            }
        )
    return plan


# ----------------------------------------------------------------------------- report


def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def fmt(x, spec="{:.2f}", none="-"):
    return none if x is None else spec.format(x)


def fx(x):
    return fmt(x, "{:.2f}x")


def ms(x):
    return fmt(None if x is None else x * 1e3, "{:.0f}")


def first_request_stall(srv: dict):
    """Seconds by which the worse of the first two requests' TTFT exceeds the allowance
    (steady c=1 TTFT p50 + max(0.25 s, 50%)); <= 0 means no stall. None if not measured."""
    steady = ((srv.get("levels") or {}).get("1") or {}).get("ttft_s_p50")
    firsts = [(srv.get(k) or {}).get("ttft_s") for k in ("first_request", "warmup_request")]
    if steady is None or None in firsts:
        return None
    return max(firsts) - (steady + max(0.25, 0.5 * steady))


def report(res: dict) -> tuple[str, dict]:
    lines = []
    cfg, raw, servers = res["config"], res.get("raw"), res["servers"]
    mlxd, mlxlm = servers.get("mlxd", {}), servers.get("mlx_lm.server", {})
    lines.append(
        f"model {cfg['model_dir']}  |  {res['probe']['backend']} "
        f"({res['probe']['default_device']}), {os.cpu_count()} cores, mlx "
        f"{res['probe']['mlx']}, mlx-lm {res['probe']['mlx_lm']}"
    )
    lines.append(
        f"max_tokens {cfg['max_tokens']}, temperature 0, concurrency "
        f"{','.join(map(str, cfg['concurrency']))}, {cfg['rounds']} timed round(s) "
        f"per level, {cfg['warmup_rounds']} untimed warm-up round(s) per level, raw reps "
        f"{cfg['raw_reps']}"
    )
    for note in res["notes"]:
        lines.append(f"note: {note}")
    lines.append("")
    hdr = (
        f"{'server':<15}{'conc':>5}{'ok/n':>7}{'tokens':>8}{'agg tok/s':>11}"
        f"{'decode/strm':>13}{'TTFT p50':>10}{'TTFT p95':>10}{'ITL p50':>9}{'ITL p99':>9}"
    )
    lines.append(hdr + "   (decode/strm = per-stream decode tok/s, median; times in ms)")
    lines.append("-" * len(hdr))
    if raw:
        lines.append(
            f"{'raw mlx-lm':<15}{1:>5}{'':>7}{raw['tokens']:>8}{'':>11}"
            f"{fmt(raw['decode_tok_s']):>13}{ms(raw['ttft_s']):>10}"
        )
    for name in servers:
        srv = servers.get(name)
        if not srv:
            continue
        if srv.get("error") and not srv["levels"]:
            lines.append(f"{name:<15} FAILED: {srv['error'].splitlines()[0]}")
            continue
        for c in cfg["concurrency"]:
            s = srv["levels"].get(str(c))
            if not s:
                continue
            lines.append(
                f"{name:<15}{c:>5}{s['streams'] - s['failed']:>4}/{s['streams']:<2}"
                f"{s['completion_tokens']:>8}{fmt(s['aggregate_tok_s']):>11}"
                f"{fmt(s['decode_tok_s_p50']):>13}{ms(s['ttft_s_p50']):>10}"
                f"{ms(s['ttft_s_p95']):>10}{ms(s['itl_s_p50']):>9}{ms(s['itl_s_p99']):>9}"
            )

    lines.append("")
    lines.append("startup, and the first two requests after ready (the 2nd is the warm-up)")
    lv1 = lambda srv: (srv.get("levels") or {}).get("1") or {}
    for name in servers:
        srv = servers.get(name) or {}
        st, fr, wr = srv.get("startup"), srv.get("first_request"), srv.get("warmup_request")
        if not (st and fr and wr):
            continue
        extra = (
            f", its 1-token readiness request took {st['tiny_request_s']:.2f}s"
            if st.get("tiny_request_s") is not None
            else ""
        )
        lines.append(
            f"  {name:<14} ready {st['ready_s']:.1f}s (/health 200 at {st['health_s']:.1f}s{extra})"
        )
        lines.append(
            f"  {'':<14} 1st request TTFT {ms(fr['ttft_s'])} ms ({fr['total_s']:.2f}s in "
            f"all), 2nd {ms(wr['ttft_s'])} ms ({wr['total_s']:.2f}s); steady c=1 TTFT p50 "
            f"{ms(lv1(srv).get('ttft_s_p50'))} ms"
        )

    lines.append("")
    lines.append(
        "peak memory, GiB (MLX = the process's own mx.get_peak_memory; RSS = resident "
        "high-water mark; GPU = device memory in use above the idle GPU, nvidia-smi)"
    )
    gib = lambda b: "-" if b is None else f"{b / 2**30:.2f}"
    rows = [("raw mlx-lm", (raw or {}).get("memory") or {})] + [
        (name, (servers.get(name) or {}).get("memory") or {}) for name in servers
    ]
    for name, mem in rows:
        lines.append(
            f"  {name:<14} MLX {gib(mem.get('mlx_peak_bytes')):>6}   RSS "
            f"{gib(mem.get('rss_peak_bytes')):>6}   GPU "
            f"{gib(mem.get('gpu_used_peak_bytes')):>6}"
        )

    # Ratios.
    ratios = {"levels": {}}
    lv = lambda srv, c: (srv.get("levels") or {}).get(str(c)) or {}
    b1 = lv(mlxd, 1).get("decode_tok_s_p50")
    rawd = raw["decode_tok_s"] if raw else None
    ratios["mlxd_over_raw_batch1_decode"] = ratio(b1, rawd)
    ratios["mlx_lm_server_over_raw_batch1_decode"] = ratio(
        lv(mlxlm, 1).get("decode_tok_s_p50"), rawd
    )
    for c in cfg["concurrency"]:
        a, b = lv(mlxd, c), lv(mlxlm, c)
        ratios["levels"][str(c)] = {
            "aggregate": ratio(a.get("aggregate_tok_s"), b.get("aggregate_tok_s")),
            "ttft_p50": ratio(a.get("ttft_s_p50"), b.get("ttft_s_p50")),
            "decode_p50": ratio(a.get("decode_tok_s_p50"), b.get("decode_tok_s_p50")),
        }
    lines.append("")
    lines.append(
        f"batch-1 decode vs raw mlx-lm: mlxd {fx(ratios['mlxd_over_raw_batch1_decode'])}"
        f", mlx_lm.server {fx(ratios['mlx_lm_server_over_raw_batch1_decode'])}"
    )
    lines.append(
        f"{'mlxd / mlx_lm.server':<36}" + "".join(f"{'c=' + str(c):>9}" for c in cfg["concurrency"])
    )
    for key, label in (
        ("aggregate", "aggregate tok/s (higher=better)"),
        ("decode_p50", "per-stream decode (higher=better)"),
        ("ttft_p50", "TTFT p50 (lower=better)"),
    ):
        lines.append(
            f"  {label:<34}"
            + "".join(f"{fx(ratios['levels'][str(c)][key]):>9}" for c in cfg["concurrency"])
        )

    for extra in (
        reportmore.server_ratio_lines(servers, cfg["concurrency"], "mlxd", "vllm-mlx"),
        reportmore.variant_lines(servers, cfg["concurrency"]),
        reportmore.workload_lines(servers),
    ):
        if extra:
            lines.append("")
            lines.extend(extra)
    restart = mlxd.get("restart") or {}
    if restart.get("startup"):
        lines.append("")
        lines.append(
            f"mlxd second start: ready {restart['startup']['ready_s']:.1f}s (first start "
            f"{(mlxd.get('startup') or {}).get('ready_s', 0):.1f}s), its first request TTFT "
            f"{ms((restart.get('first_request') or {}).get('ttft_s'))} ms"
        )
    bw_lines, ratios["bandwidth"] = reportmore.bandwidth_lines(res)
    lines.append("")
    lines.extend(bw_lines)

    # Targets.
    def verdict(ok):
        return "n/a " if ok is None else ("PASS" if ok else "MISS")

    level = lambda c: ratios["levels"].get(str(c), {})
    stalls = {name: first_request_stall(servers.get(name) or {}) for name in servers}
    ratios["first_requests_stall_s"] = stalls
    stall = stalls.get("mlxd")
    b1 = 1.0 if res["probe"]["gpu"] else 0.98
    targets = [
        (f"batch-1 decode mlxd/raw >= {b1:.2f}x", ratios["mlxd_over_raw_batch1_decode"], b1, ">=")
    ]
    if res["probe"]["gpu"]:
        for c in (32, 64):
            targets.append(
                (
                    f"aggregate @{c} streams mlxd/mlx_lm.server >= 8.00x (issue 15)",
                    level(c).get("aggregate"),
                    8.0,
                    ">=",
                )
            )
    else:
        targets += [
            (
                "aggregate @8 streams mlxd/mlx_lm.server >= 1.00x",
                level(8).get("aggregate"),
                1.0,
                ">=",
            ),
            (
                "TTFT p50 @8 streams mlxd/mlx_lm.server <= 1.00x",
                level(8).get("ttft_p50"),
                1.0,
                "<=",
            ),
        ]
    targets.append(
        (
            "mlxd first 2 requests after ready: no stall (TTFT <= steady c=1 TTFT + "
            "max(0.25s, 50%))",
            stall,
            0.0,
            "<=",
        )
    )
    targets += reportmore.more_targets(res, res["probe"]["gpu"])
    lines.append("")
    lines.append(TARGETS_NOTE + ":")
    res_targets = []
    for label, value, thr, op in targets:
        ok = None if value is None else (value >= thr if op == ">=" else value <= thr)
        res_targets.append({"target": label, "value": value, "pass": ok})
        shown = (
            fmt(value, "{:.2f} s")
            if label.endswith(" s")
            else fmt(value, "{:.3f}x")
            if thr
            else fmt(value, "{:+.2f}s vs allowance")
        )
        lines.append(f"  [{verdict(ok)}] {label:<86} {shown}")
    return "\n".join(lines), {"ratios": ratios, "targets": res_targets}


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        "--gguf",
        dest="model",
        default=str(DEFAULT_MODEL),
        help="MLX model directory, or a .gguf exported once to an MLX directory "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--export-dir", help="where a .gguf --model is exported (default: next to it, NAME-mlx)"
    )
    p.add_argument(
        "--concurrency",
        default="1,4,8,16",
        help="comma-separated stream counts (default %(default)s)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        help=f"completion tokens per stream (default {CPU_DEFAULTS['max_tokens']} on "
        f"CPU, {GPU_DEFAULTS['max_tokens']} on GPU)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        help="timed rounds per concurrency level (default "
        f"{CPU_DEFAULTS['rounds']} CPU, {GPU_DEFAULTS['rounds']} GPU)",
    )
    p.add_argument(
        "--warmup-rounds",
        type=int,
        help="untimed rounds before each level (default "
        f"{CPU_DEFAULTS['warmup_rounds']} CPU, {GPU_DEFAULTS['warmup_rounds']} GPU)",
    )
    p.add_argument(
        "--raw-reps",
        type=int,
        help="timed raw mlx-lm generations (default "
        f"{CPU_DEFAULTS['raw_reps']} CPU, {GPU_DEFAULTS['raw_reps']} GPU)",
    )
    p.add_argument(
        "--servers",
        default="mlxd,mlx_lm.server,vllm-mlx",
        help="which servers to run: mlxd, mlx_lm.server, vllm-mlx (installed into its own venv "
        "on first use) (default %(default)s)",
    )
    p.add_argument("--no-raw", action="store_true", help="skip the raw mlx-lm measurement")
    p.add_argument(
        "--workloads",
        default="shared-prefix,long-prompt",
        help="workloads after the levels (workloads.py): shared-prefix, long-prompt, or none "
        "(default %(default)s)",
    )
    p.add_argument(
        "--workload-servers",
        default="mlxd",
        help="servers that run the workloads (default %(default)s)",
    )
    p.add_argument(
        "--workload-rounds", type=int, default=1, help="timed rounds per workload (default 1)"
    )
    p.add_argument(
        "--workload-size",
        action="append",
        default=[],
        metavar="KEY=N",
        help="override one workload size (keys: " + ", ".join(WORKLOAD_GPU) + ")",
    )
    p.add_argument(
        "--mlxd-variant",
        action="append",
        default=[],
        type=lambda text: tuple(text.split("=", 1)) if "=" in text else (text, ""),
        metavar="NAME=ARGS",
        help="also run mlxd with these extra arguments over the same levels, e.g. "
        "kv8='--kv-bits 8' (repeatable)",
    )
    p.add_argument(
        "--restart",
        action="store_true",
        help="start mlxd a second time after its run (same kernel caches): ready time",
    )
    p.add_argument(
        "--vllm-mlx-args", default="", help="extra vllm-mlx serve arguments (default: none)"
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        help="mlxd --max-batch-size (default: none, mlxd's own auto choice)",
    )
    p.add_argument("--mlxd-args", default="", help="extra mlxd arguments (one shell-quoted string)")
    p.add_argument(
        "--mlx-lm-args",
        default="",
        help="extra mlx_lm.server arguments (default: none, its defaults)",
    )
    p.add_argument(
        "--mlxd-pythonpath",
        help="run mlxd from this source tree (prepended to PYTHONPATH), e.g. a "
        "`git archive` of another revision",
    )
    p.add_argument(
        "--kernel-cache",
        choices=("cold", "shared"),
        default="cold",
        help="CUDA only: 'cold' gives raw, mlxd and mlx_lm.server each an empty MLX PTX "
        "and CUDA kernel cache (fair first-request numbers whatever the order); "
        "'shared' leaves the caches alone (default %(default)s)",
    )
    p.add_argument("--startup-timeout", type=float, default=900.0)
    p.add_argument("--request-timeout", type=float, default=900.0)
    p.add_argument("--out", help="JSON results (default bench/results/results-<timestamp>.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    t_start = time.perf_counter()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = Path(args.out) if args.out else BENCH_DIR / "results" / f"results-{stamp}.json"
    log_dir = BENCH_DIR / "logs" / stamp
    concurrency = [int(x) for x in args.concurrency.split(",") if x.strip()]
    servers_wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    for s in servers_wanted:
        if s not in ("mlxd", "mlx_lm.server", "vllm-mlx"):
            raise SystemExit(f"bench: unknown server {s!r} (mlxd, mlx_lm.server, vllm-mlx)")
    args.workloads = [w for w in args.workloads.split(",") if w.strip() not in ("", "none")]
    args.workload_servers = [w.strip() for w in args.workload_servers.split(",")]

    env = dict(os.environ)
    mlxd_env = dict(env)
    if args.mlxd_pythonpath:
        mlxd_env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(args.mlxd_pythonpath).resolve())] + [x for x in [env.get("PYTHONPATH")] if x]
        )

    load_before = os.getloadavg()
    probe = helper(["probe"], env, 300)
    d = GPU_DEFAULTS if probe["gpu"] else CPU_DEFAULTS
    args.workload = dict(WORKLOAD_GPU if probe["gpu"] else WORKLOAD_CPU)
    for item in args.workload_size:
        key, _, value = item.partition("=")
        if key not in args.workload:
            raise SystemExit(f"bench: unknown workload size {key!r}")
        args.workload[key] = int(value)
    args.cuda = probe["backend"] == "cuda"
    cache_root = None
    if probe["backend"] == "cuda" and args.kernel_cache == "cold":
        cache_root = tempfile.mkdtemp(prefix="mlxd-bench-kernels-")
    max_tokens = args.max_tokens or d["max_tokens"]
    rounds = args.rounds if args.rounds is not None else d["rounds"]
    warmup_rounds = args.warmup_rounds if args.warmup_rounds is not None else d["warmup_rounds"]
    raw_reps = args.raw_reps or d["raw_reps"]
    notes = []
    if load_before[0] > 0.25 * (os.cpu_count() or 1):
        notes.append(
            f"the machine was busy before the run (load average {load_before[0]:.2f} on "
            f"{os.cpu_count()} cores): expect noisy numbers"
        )
    if probe["backend"] == "cuda":
        notes.append(
            "kernel caches: "
            + (
                "each process (raw, mlxd, mlx_lm.server) starts with its own empty MLX PTX and CUDA "
                "caches, so first requests are cold for all three (--kernel-cache shared to reuse)"
                if cache_root
                else "shared (whatever an earlier process compiled is reused)"
            )
        )
    if not probe["gpu"]:
        notes.append(
            f"CPU defaults: max_tokens {CPU_DEFAULTS['max_tokens']} (GPU "
            f"{GPU_DEFAULTS['max_tokens']}), 1 timed round per level and no warm-up "
            "rounds (GPU 3 and 1), to keep a full run near 10 minutes on 2 cores"
        )

    model_dir, gguf = prepare_model(args, mlxd_env)
    plan = make_plan(concurrency, rounds, warmup_rounds)
    res = {
        "started": stamp,
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "probe": probe,
        "config": {
            "model_dir": str(model_dir),
            "gguf": gguf,
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "rounds": rounds,
            "warmup_rounds": warmup_rounds,
            "raw_reps": raw_reps,
            "servers": servers_wanted,
            "example_messages": messages_for(plan["first"]),
            "workloads": args.workloads,
            "workload_sizes": args.workload,
            "mlxd_variants": args.mlxd_variant,
        },
        "notes": notes,
        "servers": {},
        "raw": None,
    }
    crashed = False
    exit_code = 1
    try:
        # 1. raw mlx-lm, batch 1, on the prompt the first timed c=1 round sends.
        timed = [
            lvl["timed"][0][0] for lvl in plan["levels"] if lvl["concurrency"] == 1 and lvl["timed"]
        ] or [plan["warmup"]]
        if not args.no_raw:
            log(f"raw mlx-lm decode on {model_dir.name} ({raw_reps} reps of {max_tokens} tokens)")
            try:
                res["raw"] = helper(
                    [
                        "raw",
                        "--model",
                        str(model_dir),
                        "--messages",
                        json.dumps(messages_for(timed[0])),
                        "--warmup-messages",
                        json.dumps(messages_for(plan["first"])),
                        "--max-tokens",
                        str(max_tokens),
                        "--reps",
                        str(raw_reps),
                    ],
                    with_kernel_cache(env, cache_root, "raw"),
                    args.request_timeout,
                )
                log(f"raw mlx-lm: {res['raw']['decode_tok_s']:.2f} tok/s decode")
            except Exception as e:
                crashed = True
                log(f"raw mlx-lm FAILED: {e}")
                res["raw_error"] = str(e)

        # 2. mlxd, then its variants (--mlxd-variant NAME=ARGS), then a second start.
        if "mlxd" in servers_wanted:
            help_text = mlxd_flags(mlxd_env, mlxd_cwd(args))
            if args.mlxd_pythonpath:
                notes.append(f"mlxd run from {args.mlxd_pythonpath}")
            mlxd_run_env = with_kernel_cache(mlxd_env, cache_root, "mlxd")
            for name, extra in [("mlxd", "")] + args.mlxd_variant:
                label = name if name == "mlxd" else f"mlxd[{name}]"
                port = free_port()
                cmd = mlxd_command(args, model_dir, port, log_dir, help_text, extra)
                res["servers"][label] = run_server(
                    label,
                    cmd,
                    port,
                    log_dir / f"{label}.log",
                    mlxd_run_env,
                    False,
                    plan,
                    max_tokens,
                    args,
                    mlxd_cwd(args),
                )
            if args.restart:
                port = free_port()
                cmd = mlxd_command(args, model_dir, port, log_dir, help_text, "")
                res["servers"]["mlxd"]["restart"] = run_probe(
                    "mlxd (second start)",
                    cmd,
                    port,
                    log_dir / "mlxd-restart.log",
                    mlxd_run_env,
                    max_tokens,
                    args,
                    mlxd_cwd(args),
                )

        # 3. mlx_lm.server, with its own defaults.
        if "mlx_lm.server" in servers_wanted:
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "mlx_lm",
                "server",
                "--model",
                str(model_dir),
                "--host",
                HOST,
                "--port",
                str(port),
            ] + shlex.split(args.mlx_lm_args)
            dflt = probe.get("mlx_lm_server_defaults") or {}
            notes.append(
                "mlx_lm.server runs with its defaults ("
                + ", ".join(f"--{k} {v}" for k, v in dflt.items() if k != "max-tokens")
                + ")"
                + (f" plus {args.mlx_lm_args}" if args.mlx_lm_args else "")
                + "; it is 'ready' once it answers a 1-token request (its /health says ok "
                "while the model still loads)"
            )
            res["servers"]["mlx_lm.server"] = run_server(
                "mlx_lm.server",
                cmd,
                port,
                log_dir / "mlx_lm_server.log",
                with_kernel_cache(env, cache_root, "mlx_lm"),
                True,
                plan,
                max_tokens,
                args,
            )
        # 4. vllm-mlx, in its own venv, continuous batching on.
        if "vllm-mlx" in servers_wanted:
            try:
                exe = refservers.vllm_mlx_executable(probe["mlx"], log)
            except RuntimeError as e:
                exe = None
                notes.append(f"vllm-mlx not run: {e}")
            if exe is not None:
                port = free_port()
                cmd = refservers.vllm_mlx_command(
                    exe, model_dir, HOST, port, shlex.split(args.vllm_mlx_args)
                )
                notes.append(
                    f"vllm-mlx ({refservers.VLLM_MLX}) runs in {refservers.VENV} with "
                    "--continuous-batching; ready once it answers a 1-token request"
                )
                EXTRA_FIELDS["model"] = refservers.SERVED_NAME
                try:
                    res["servers"]["vllm-mlx"] = run_server(
                        "vllm-mlx",
                        cmd,
                        port,
                        log_dir / "vllm_mlx.log",
                        with_kernel_cache(env, cache_root, "vllm_mlx"),
                        True,
                        plan,
                        max_tokens,
                        args,
                    )
                finally:
                    EXTRA_FIELDS.clear()
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C; SIGTERM/SIGHUP raise SystemExit
        crashed = True
        res["interrupted"] = True
        exit_code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
        log("interrupted: servers stopped, reporting what was measured")
    except Exception as e:
        crashed = True
        res["error"] = f"{type(e).__name__}: {e}"
        log(f"FAILED: {res['error']}")
    finally:
        _stop_all()
        if cache_root:
            shutil.rmtree(cache_root, ignore_errors=True)

    for srv in res["servers"].values():
        if srv.get("error") or any(lvl["failed"] for lvl in srv["levels"].values()):
            crashed = True
    res["wall_s"] = time.perf_counter() - t_start
    res["load_average_before"], res["load_average_after"] = load_before, os.getloadavg()
    text, extra = report(res)
    res.update(extra)
    text += f"\n\nwhole run {res['wall_s'] / 60:.1f} min; JSON: {out_path}; server logs: {log_dir}"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(text, flush=True)
    return exit_code if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
