"""Hold N idle and half-open connections against a running mlxd while a real chat completes.

    python tools/soak_idle.py --url http://127.0.0.1:8000 --connections 500

Half of the connections send nothing, half send half a request head and then stall (slowloris).
Prints how long the chat took with and without them held, and how many were still open.
Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import urllib.parse
import urllib.request

CHAT = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 16,
    "temperature": 0,
}


def chat(url: str) -> tuple[float, str]:
    started = time.monotonic()
    req = urllib.request.Request(
        url + "/v1/chat/completions",
        json.dumps(CHAT).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        body = json.loads(resp.read())
    return time.monotonic() - started, body["choices"][0]["message"]["content"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--connections", type=int, default=500)
    args = ap.parse_args()
    host = urllib.parse.urlparse(args.url)
    if host.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("loopback only")
    baseline, _ = chat(args.url)
    held = []
    for i in range(args.connections):
        sock = socket.create_connection((host.hostname, host.port), timeout=10)
        if i % 2:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
        held.append(sock)
    time.sleep(0.5)
    loaded, text = chat(args.url)
    alive = 0
    for sock in held:
        sock.setblocking(False)
        try:
            alive += sock.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
        sock.close()
    print(
        f"chat alone: {baseline:.2f}s; with {args.connections} idle/half-open connections held: "
        f"{loaded:.2f}s ({text!r}); {alive} of them still open at the end"
    )


if __name__ == "__main__":
    main()
