"""Helpers for the front end's tests (tests/router/): front ends of ``--models`` on port 0 in a
background thread, with real or stand-in workers; model directories for the stand-in; HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import threading
import time
from pathlib import Path

FAKE_WORKER = [sys.executable, str(Path(__file__).with_name("fakeworker.py"))]


class FrontThread:
    """``mlxd --models`` (mlxd.fleet.front.serve) on 127.0.0.1:0 in a thread of its own."""

    def __init__(self, config, worker: list[str] | None = None) -> None:
        self.config, self.worker = config, worker
        self.port: int | None = None
        self.code: int | None = None
        self._listening = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        from mlxd.fleet import front

        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        try:
            self.code = await front.serve(
                self.config, on_listening=self._on_listening, stop=self.stop, worker=self.worker
            )
        finally:
            self._listening.set()

    def _on_listening(self, addresses) -> None:
        self.port = addresses[0][1]
        self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FrontThread:
        self._thread.start()
        assert self._listening.wait(30), "the front end did not start listening"
        assert self.port is not None, f"the front end exited with {self.code}"
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop.set)
            self._thread.join(60)


def fake_model(root: Path, name: str, **behaviour) -> Path:
    """A model directory the catalog accepts, for the stand-in worker (fake.json: behaviour)."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if behaviour:
        (path / "fake.json").write_text(json.dumps(behaviour))
    return path


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def call(front, method: str, path: str, body=None, headers=None):
    """(status, lower-cased headers, parsed JSON or raw bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=60)
    data = json.dumps(body) if isinstance(body, dict) else body
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, parsed


class Stream:
    """A streamed POST read event by event (``data:`` payloads), on its own connection."""

    def __init__(self, front, path: str, body: dict, headers=None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=120)
        self.conn.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
        )
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def next(self) -> str | None:
        """The next event's data, or None at the end of the stream."""
        while line := self.resp.readline():
            text = line.decode().rstrip("\n")
            if text.startswith("data: "):
                return text[6:]
        return None

    def rest(self) -> list[str]:
        """Every event left, then the connection closes."""
        out = []
        while (event := self.next()) is not None:
            out.append(event)
        self.close()
        return out

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


def status_of(front, model_id: str) -> dict:
    status, _, body = call(front, "GET", "/admin/status")
    assert status == 200, body
    return next(m for m in body["models"] if m["id"] == model_id)
