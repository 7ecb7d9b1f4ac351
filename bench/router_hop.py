#!/usr/bin/env python3
"""What one SSE event costs the front end of --models, without a model: a stand-in worker
(tests/fakeworker.py) streams N events as fast as it can, read straight from its Unix socket and
then through the front end (in this process, on a thread), alternating.

    python bench/router_hop.py [--events 20000] [--rounds 3]

Prints events/s both ways and the CPU time this process spent per event through the front end
(front end and HTTP client together): an upper bound on the hop's cost per streamed token.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from mlxd.service import upstream  # noqa: E402
from mlxd.service.config import Config  # noqa: E402

from routerkit import FAKE_WORKER, FrontThread, call, fake_model  # noqa: E402


def through_front(front: FrontThread, body: dict) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", front.port)
    conn.request("POST", "/v1/x", json.dumps(body), {"Content-Type": "application/json"})
    resp, n = conn.getresponse(), 0
    while line := resp.readline():
        n += line.startswith(b"data: ")
    conn.close()
    return n


async def straight(socket: str, body: dict) -> int:
    fields = [("content-type", "application/json")]
    resp = await upstream.request(socket, "POST", "/v1/x", fields, json.dumps(body).encode())
    n = sum([1 async for _ in resp.pieces()])
    resp.close()
    return n


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlxd-hop-"))
    fake_model(root, "m")
    front = FrontThread(
        Config(models=(str(root),), port=0, log_level="warning"), FAKE_WORKER
    ).start()
    try:
        assert call(front, "POST", "/v1/x", {"model": "m"})[0] == 200
        socket = call(front, "GET", "/admin/status")[2]["models"][0]["socket"]
        body = {"model": "m", "stream": True, "n": args.events, "delay": 0}
        for _ in range(args.rounds):
            t = time.perf_counter()
            n = asyncio.run(straight(socket, body))
            direct = n / (time.perf_counter() - t)
            t, c = time.perf_counter(), cpu()
            n = through_front(front, body)
            routed, per_event = n / (time.perf_counter() - t), (cpu() - c) / n
            print(
                f"straight {direct:,.0f} ev/s; through the front end {routed:,.0f} ev/s, "
                f"{per_event * 1e6:.0f} us CPU per event (front end + client)"
            )
    finally:
        front.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
