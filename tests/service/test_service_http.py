"""Operating the server over HTTP: API keys, CORS, request ids, status, stats and metrics."""

from __future__ import annotations

import http.client
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import ServerThread

KEY = "sk-test-123"
ORIGIN = "http://app.example"
CHAT = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})


@pytest.fixture(scope="module")
def secured(tiny_model_dir):
    from mlxd.service.config import Config

    srv = ServerThread(
        Config(
            model=str(tiny_model_dir), port=0, api_keys=(KEY, "other-key"), cors_origins=(ORIGIN,)
        )
    ).start()
    yield srv
    srv.close()


def call(srv, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_api_routes_need_the_key(secured):
    status, headers, body = call(secured, "POST", "/v1/chat/completions", CHAT)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert call(secured, "GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert call(secured, "GET", "/v1/models", headers={"Authorization": KEY})[0] == 401
    assert call(secured, "GET", "/v1/models", headers=AUTH)[0] == 200
    assert (
        call(secured, "GET", "/v1/models", headers={"Authorization": "Bearer other-key"})[0] == 200
    )
    assert call(secured, "POST", "/v1/chat/completions", CHAT, AUTH)[0] == 200
    assert call(secured, "GET", "/v1/mlx/status")[0] == 401


def test_health_and_metrics_open_by_default(secured):
    assert call(secured, "GET", "/health")[0] == 200
    assert call(secured, "GET", "/metrics")[0] == 200


def test_health_needs_key_with_auth_health(tiny_model_dir):
    from mlxd.service.config import Config

    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0, api_keys=(KEY,), auth_health=True)
    ).start(wait_ready=False)
    try:
        assert call(srv, "GET", "/health")[0] == 401
        assert call(srv, "GET", "/metrics")[0] == 401
    finally:
        srv.close()


def test_cors_allow_list_and_preflight(secured):
    status, headers, _ = call(
        secured,
        "OPTIONS",
        "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert "Authorization" in headers["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in headers
    _, headers, _ = call(secured, "GET", "/v1/models", headers={"Origin": ORIGIN, **AUTH})
    assert headers["access-control-allow-origin"] == ORIGIN and headers["vary"] == "Origin"
    _, headers, _ = call(
        secured, "GET", "/v1/models", headers={"Origin": "http://evil.example", **AUTH}
    )
    assert "access-control-allow-origin" not in headers
    status, headers, _ = call(
        secured,
        "OPTIONS",
        "/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in headers


def test_cors_off_by_default(tiny_server):
    status, headers, _ = call(
        tiny_server,
        "OPTIONS",
        "/v1/models",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert status == 405 and "access-control-allow-origin" not in headers


def test_request_id_echoed_or_generated(secured):
    _, headers, _ = call(secured, "GET", "/health", headers={"X-Request-Id": "trace-42"})
    assert headers["x-request-id"] == "trace-42"
    _, headers, _ = call(secured, "GET", "/health", headers={"X-Request-Id": "bad id\x7f"})
    assert headers["x-request-id"] != "bad id" and len(headers["x-request-id"]) == 32


def test_status_reports_model_device_memory_queue(secured):
    status, _, body = call(secured, "GET", "/v1/mlx/status", headers=AUTH)
    report = json.loads(body)
    assert status == 200 and report["version"]
    model = report["model"]
    assert model["id"] == "tiny-llama" and model["format"] == "mlx" and model["type"] == "llama"
    assert model["parameters"] > 0 and model["context_length"] == 1024
    assert model["kv_bytes_per_token"] > 0
    assert report["device"]["name"]
    assert set(report["memory"]) == {"active_bytes", "peak_bytes", "cache_bytes"}
    assert report["queue"]["running_sequences"] == 0 and report["uptime_seconds"] >= 0


def test_stats_and_metrics_count_requests(secured):
    for _ in range(2):
        assert call(secured, "POST", "/v1/chat/completions", CHAT, AUTH)[0] == 200
    call(secured, "POST", "/v1/chat/completions", "{bad", AUTH)
    status, _, body = call(secured, "GET", "/stats", headers=AUTH)
    stats = json.loads(body)
    assert (
        stats["completion_tokens_total"] >= 2
        and stats["running_sequences"] == 0
        and stats["waiting_requests"] == 0
    )
    assert stats["errors"].get("invalid_request_error", 0) >= 1
    status, headers, body = call(secured, "GET", "/metrics")
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    requests = families["mlxd_requests"].samples
    ok_chats = [
        s
        for s in requests
        if s.labels == {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    ]
    assert ok_chats and ok_chats[0].value >= 2
    assert families["mlxd_completion_tokens"].samples[0].value >= 2
    ttft = {
        s.name: s.value
        for s in families["mlxd_time_to_first_token_seconds"].samples
        if not s.labels
    }
    assert ttft["mlxd_time_to_first_token_seconds_count"] >= 2
    assert families["mlxd_ready"].samples[0].value == 1
    assert families["mlxd_sequences_running"].samples[0].value == 0
    assert families["mlxd_requests_waiting"].samples[0].value == 0
    assert "mlxd_memory_active_bytes" in families


# ----- the root page, and quiet probes -----


def test_root_says_where_to_go(secured):
    status, headers, body = call(secured, "GET", "/")  # open, like /health
    assert status == 200 and headers["content-type"].startswith("application/json")
    index = json.loads(body)
    assert index["object"] == "mlxd" and index["ready"] is True
    assert {"/v1/models", "/health", "/v1/mlx/status"} <= set(index["routes"])
    assert "README.md" in index["docs"]


def test_root_is_a_page_for_a_browser(secured):
    accept = "text/html,application/xhtml+xml,*/*;q=0.8"
    status, headers, body = call(secured, "GET", "/", headers={"Accept": accept})
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert b'<a href="/v1/models">' in body and b'<a href="/health">' in body


def test_root_is_no_prefix_of_other_paths(secured):
    status, _h, body = call(secured, "GET", "/nothing/here")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
    assert call(secured, "POST", "/")[0] == 405


def test_probes_are_logged_at_debug(secured, caplog):
    import logging
    import time

    caplog.set_level(logging.DEBUG, logger="mlxd.access")
    call(secured, "GET", "/health")
    call(secured, "GET", "/v1/models", headers=AUTH)
    deadline = time.monotonic() + 10  # the access line follows the response
    wanted = {"GET /health", "GET /v1/models"}  # an earlier test's line may land here too

    def levels() -> dict[str, int]:
        lines = [r for r in caplog.records if r.name == "mlxd.access"]
        return {r.getMessage().split('"')[1]: r.levelno for r in lines} if lines else {}

    while not wanted <= levels().keys():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert {k: v for k, v in levels().items() if k in wanted} == {
        "GET /health": logging.DEBUG,
        "GET /v1/models": logging.INFO,
    }
