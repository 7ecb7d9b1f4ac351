"""The benchmark's HTTP client: stdlib asyncio on raw sockets (one coroutine per stream), light
enough to share the machine's cores with the server it measures; and the per-stream and pooled
statistics (bench.py and workloads.py use both)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from itertools import pairwise

HOST = "127.0.0.1"
# Fields every request body gets: vllm-mlx requires "model" (bench.py sets it while vllm-mlx
# runs); mlxd serves any name, and mlx_lm.server would try to load a model so named.
EXTRA_FIELDS: dict = {}


class _Dechunker:
    """Incremental Transfer-Encoding: chunked decoder."""

    def __init__(self) -> None:
        self.buf = b""
        self.need: int | None = None
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while not self.done:
            if self.need is None:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(self.buf[:i].split(b";")[0].strip() or b"0", 16)
                self.buf = self.buf[i + 2 :]
                if size == 0:
                    self.done = True
                    break
                self.need = size
            if len(self.buf) < self.need + 2:
                break
            out.append(self.buf[: self.need])
            self.buf = self.buf[self.need + 2 :]
            self.need = None
        return b"".join(out)


def _parse_head(head: bytes) -> tuple[int, dict]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


def _request_bytes(method: str, path: str, port: int, body: bytes | None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + (body or b"")


async def http_request(
    port: int, method: str, path: str, obj=None, timeout: float = 30.0
) -> tuple[int, bytes]:
    """One plain request; returns (status, body)."""

    async def go():
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            body = None if obj is None else json.dumps(obj).encode()
            writer.write(_request_bytes(method, path, port, body))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers = _parse_head(head)
            if "content-length" in headers:
                data = await reader.readexactly(int(headers["content-length"]))
            else:
                data = await reader.read()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    data = _Dechunker().feed(data)
            return status, data
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


def chat_payload(messages: list[dict], max_tokens: int) -> dict:
    return {
        **EXTRA_FIELDS,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_chat(port: int, payload: dict, timeout: float, res: dict | None = None) -> dict:
    """One streaming chat completion; content-chunk arrival times are perf_counter() values.
    ``res``: a dict to fill (the caller can watch it while the stream runs)."""
    body = json.dumps(payload).encode()
    res = res if res is not None else {}
    res |= {
        "ok": False,
        "error": None,
        "t_send": time.perf_counter(),
        "t_end": None,
        "content_times": [],
        "completion_tokens": None,
        "prompt_tokens": None,
        "cached_tokens": None,
        "finish_reason": None,
    }

    async def go():
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(_request_bytes("POST", "/v1/chat/completions", port, body))
            await writer.drain()
            status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            if status != 200:
                rest = await reader.read()
                raise RuntimeError(f"HTTP {status}: {rest[:300]!r}")
            dechunk = (
                _Dechunker() if "chunked" in headers.get("transfer-encoding", "").lower() else None
            )
            buf = b""
            times = res["content_times"]
            done = False
            while not done:
                data = await reader.read(65536)
                now = time.perf_counter()
                if not data:
                    break
                if dechunk is not None:
                    data = dechunk.feed(data)
                buf = (buf + data).replace(b"\r\n", b"\n")
                while not done:
                    i = buf.find(b"\n\n")
                    if i < 0:
                        break
                    event, buf = buf[:i], buf[i + 2 :]
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue  # comments (": keepalive ...") and other fields
                        d = line[5:].strip()
                        if d == b"[DONE]":
                            done = True
                            break
                        obj = json.loads(d)
                        if obj.get("error"):
                            raise RuntimeError(f"error event: {obj['error']}")
                        for ch in obj.get("choices") or ():
                            if (ch.get("delta") or {}).get("content"):
                                times.append(now)
                            if ch.get("finish_reason"):
                                res["finish_reason"] = ch["finish_reason"]
                        usage = obj.get("usage")
                        if usage:
                            res["completion_tokens"] = usage.get("completion_tokens")
                            res["prompt_tokens"] = usage.get("prompt_tokens")
                            res["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get(
                                "cached_tokens"
                            )
                if dechunk is not None and dechunk.done:
                    break
            res["t_end"] = time.perf_counter()
            if not done:
                raise RuntimeError("stream ended without data: [DONE]")
            if not times:
                raise RuntimeError("no content in the stream")
            res["ok"] = True
        finally:
            writer.close()

    try:
        await asyncio.wait_for(go(), timeout)
    except Exception as e:  # recorded per stream; the round reports it
        res["error"] = f"{type(e).__name__}: {e}"
        res["t_end"] = res["t_end"] or time.perf_counter()
    return res


def stream_stats(r: dict) -> dict:
    """Per-stream numbers: tokens (usage, else content chunks), TTFT, decode rate, chunk gaps."""
    times = r["content_times"]
    tokens = r["completion_tokens"] if r["completion_tokens"] is not None else len(times)
    out = {
        "ok": r["ok"],
        "error": r["error"],
        "tokens": tokens if r["ok"] else 0,
        "chunks": len(times),
        "prompt_tokens": r["prompt_tokens"],
        "cached_tokens": r["cached_tokens"],
        "finish_reason": r["finish_reason"],
        "ttft_s": None,
        "decode_tok_s": None,
        "total_s": r["t_end"] - r["t_send"],
        "gaps_s": [],
    }
    if times:
        out["ttft_s"] = times[0] - r["t_send"]
        out["gaps_s"] = [b - a for a, b in pairwise(times)]
        if tokens > 1 and times[-1] > times[0]:
            out["decode_tok_s"] = (tokens - 1) / (times[-1] - times[0])
    return out


def pct(xs, q: float):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = (len(xs) - 1) * q / 100.0
    f = math.floor(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def summarize(rounds: list[dict]) -> dict:
    """Pool the timed rounds of one concurrency level."""
    streams = [s for rnd in rounds for s in rnd["streams"]]
    ok = [s for s in streams if s["ok"]]
    wall = sum(rnd["wall_s"] for rnd in rounds)
    tokens = sum(s["tokens"] for s in ok)
    gaps = [g for s in ok for g in s["gaps_s"]]
    return {
        "streams": len(streams),
        "failed": len(streams) - len(ok),
        "errors": sorted({s["error"] for s in streams if s["error"]})[:5],
        "completion_tokens": tokens,
        "wall_s": wall,
        "tokens_per_stream": tokens / len(ok) if ok else None,
        "aggregate_tok_s": tokens / wall if wall > 0 and ok else None,
        "decode_tok_s_p50": pct([s["decode_tok_s"] for s in ok], 50),
        "ttft_s_p50": pct([s["ttft_s"] for s in ok], 50),
        "ttft_s_p95": pct([s["ttft_s"] for s in ok], 95),
        "itl_s_p50": pct(gaps, 50),
        "itl_s_p99": pct(gaps, 99),
        "cached_prompt_tokens": sum(s["cached_tokens"] or 0 for s in ok),
    }
