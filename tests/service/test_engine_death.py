"""The service side of a dead generation thread: the client in flight gets a clean error,
/health says 503 with the reason, new requests get 503 at once, and run_async() ends with
EXIT_ENGINE_FAILED after its shutdown grace (so systemd/launchd restart the process)."""

from __future__ import annotations

import http.client
import json
import time

from mlxd.service.config import Config
from mlxd.service.run import EXIT_ENGINE_FAILED

from helpers import Fault, ServerThread, get_json

NO_EOS = {"0": -100, "1": -100, "2": -100}


def stream_events(url: str, body: dict) -> list[str]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 200
    data = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    conn.close()
    return data


def test_a_recoverable_fault_is_a_500_and_the_server_stays_ready(tiny_model_dir):
    fault = Fault()
    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0, max_tokens=8), engine_kwargs={"probe": fault}
    ).start()
    try:
        fault.arm("emit")
        ask = {"messages": [{"role": "user", "content": "hi"}], "logit_bias": NO_EOS}
        status, body = get_json(srv.url + "/v1/chat/completions", ask)
        assert status == 500 and body["error"]["code"] == "generation_failed"
        assert "injected at emit" in body["error"]["message"]
        assert get_json(srv.url + "/health")[0] == 200
        assert get_json(srv.url + "/v1/chat/completions", ask)[0] == 200
    finally:
        srv.close()
    assert srv.code == 0


def test_a_dead_thread_is_visible_and_the_process_exits_non_zero(tiny_model_dir):
    fault = Fault()
    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0, max_tokens=8, shutdown_timeout=2),
        engine_kwargs={"probe": fault},
    ).start()
    try:
        fault.arm("emit", "recover")
        ask = {
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "logit_bias": NO_EOS,
        }
        data = stream_events(srv.url, ask)
        assert data[-1] == "[DONE]"
        error = json.loads(data[-2])["error"]
        assert error["type"] == "server_error" and "injected at recover" in error["message"]
        # Until the process is gone, nothing is served: 503 (the dead engine's, or the
        # shutdown's when it has already begun) or no answer at all.
        status, health = get_json(srv.url + "/health", timeout=5)
        assert status in (503, None)
        if health and "status" in health:
            assert health["status"] == "failed" and "injected at recover" in health["reason"]
        status, body = get_json(srv.url + "/v1/chat/completions", ask, timeout=5)
        assert status in (503, None)
        deadline = time.monotonic() + 30
        while srv.code is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.code == EXIT_ENGINE_FAILED
    finally:
        srv.close()


class _Captured:
    def __init__(self) -> None:
        self.sent: tuple | None = None

    async def send_json(self, status, body, headers=()):
        self.sent = (status, body, dict(headers))


class _DeadEngine:
    failure = "RuntimeError: boom"

    class ready:  # noqa: N801 - stands in for a threading.Event that was set
        @staticmethod
        def is_set() -> bool:
            return True


def test_health_names_the_reason_once_the_engine_is_dead():
    import asyncio

    import pytest

    from mlxd.api.app import App
    from mlxd.api.ops import health
    from mlxd.transport.errors import HttpError

    app = App(name="m")
    app.engine = _DeadEngine()  # type: ignore[assignment]
    ex = _Captured()
    asyncio.run(health(app, ex))
    assert ex.sent is not None
    status, body, headers = ex.sent
    assert status == 503 and body["status"] == "failed" and body["reason"] == "RuntimeError: boom"
    assert "Retry-After" not in headers  # it will not come back: its supervisor restarts it
    with pytest.raises(HttpError) as info:
        app.require_ready()
    assert info.value.status == 503 and info.value.code == "engine_failed"
