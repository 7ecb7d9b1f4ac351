"""The front end of --models with stand-in workers (tests/fakeworker.py: no mlx, a blink to
start): routing by model, one load for concurrent first requests, LRU at --max-loaded, the memory
budget, idle unload, crash isolation and the crash loop, unload, cancellation, admin keys, and
the status views."""

from __future__ import annotations

import json
import os
import signal
import threading

from prometheus_client.parser import text_string_to_metric_families

from mlxd.service.config import Config
from mlxd.service.modelspec import ModelEntry

from routerkit import Stream, call, fake_model, status_of, wait_for

SLOW = {"stream": True, "n": 10_000, "delay": 0.01}  # a stream that outlasts any test step


def two_models(tmp_path, **settings) -> Config:
    fake_model(tmp_path, "alpha")
    fake_model(tmp_path, "beta")
    return Config(models=(str(tmp_path),), port=0, **settings)


def test_routes_by_the_model_field(tmp_path, front_factory):
    fake_model(tmp_path, "alpha")
    fake_model(tmp_path, "beta")
    beta = ModelEntry(id="beta", aliases=("b",), settings=(("max_batch_size", 4),))
    config = Config(models=(str(tmp_path), beta), port=0)
    front = front_factory(config)
    status, _, body = call(front, "GET", "/v1/models")
    assert status == 200
    assert [(m["id"], m["loaded"]) for m in body["data"]] == [("alpha", False), ("beta", False)]
    assert body["data"][1]["aliases"] == ["b"]
    status, _, body = call(front, "POST", "/v1/chat/completions", {"model": "b", "x": 1})
    assert status == 200 and body["model"] == "beta" and body["path"] == "/v1/chat/completions"
    assert body["body"] == {"model": "b", "x": 1}  # the body goes through unchanged
    # The worker's command line: per-model settings, its share of memory, stop at once.
    assert body["config"]["max_batch_size"] == 4 and body["config"]["shutdown_timeout"] == 0
    assert body["config"]["memory_limit"] == status_of(front, "beta")["plan"]["memory_limit"]
    assert body["config"]["log_format"] == "json" and body["config"]["served_model_name"] == "beta"
    status, _, body = call(front, "POST", "/v1/messages", {"model": "alpha"})  # any POST route
    assert status == 200 and body["model"] == "alpha" and body["path"] == "/v1/messages"
    assert call(front, "GET", "/v1/models/b")[2]["id"] == "beta"
    assert [m["loaded"] for m in call(front, "GET", "/v1/models")[2]["data"]] == [True, True]


def test_unknown_and_missing_model(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path))
    status, _, body = call(front, "POST", "/v1/chat/completions", {"model": "gamma"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    assert "gamma" in body["error"]["message"] and "alpha, beta" in body["error"]["message"]
    status, _, body = call(front, "POST", "/v1/chat/completions", {"messages": []})
    assert status == 400 and body["error"]["param"] == "model"
    assert call(front, "GET", "/v1/models/gamma")[0] == 404
    fake_model(tmp_path, "gamma")  # copied in while serving: found on the next request
    assert call(front, "POST", "/v1/completions", {"model": "gamma"})[0] == 200


def test_a_read_that_names_no_model_asks_each_loaded_one(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path))
    assert call(front, "GET", "/v1/responses/beta-1")[0] == 404  # none loaded yet
    for name in ("alpha", "beta"):
        assert call(front, "POST", "/v1/completions", {"model": name})[0] == 200
    status, _, body = call(front, "GET", "/v1/responses/beta-1")
    assert status == 200 and body == {"id": "beta-1", "model": "beta"}
    assert call(front, "GET", "/v1/responses/alpha-7")[2]["model"] == "alpha"
    status, _, body = call(front, "GET", "/v1/responses/gamma-1")
    assert status == 404 and "no loaded model knows" in body["error"]["message"]
    assert call(front, "GET", "/v1/responses/beta-1?model=alpha")[0] == 404  # named: that one


def test_concurrent_first_requests_share_one_load(tmp_path, front_factory):
    fake_model(tmp_path, "slow", start_delay=0.5)
    front = front_factory(Config(models=(str(tmp_path),), port=0))
    results = []

    def ask() -> None:
        results.append(call(front, "POST", "/v1/completions", {"model": "slow"})[0])

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [200] * 6
    assert status_of(front, "slow")["loads"] == 1


def test_least_recently_used_goes_at_max_loaded(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path, max_loaded=1))
    assert call(front, "POST", "/v1/completions", {"model": "alpha"})[0] == 200
    first_pid = status_of(front, "alpha")["pid"]
    assert call(front, "POST", "/v1/completions", {"model": "beta"})[0] == 200
    assert status_of(front, "alpha")["state"] == "unloaded"
    assert status_of(front, "beta")["state"] == "ready"
    wait_for(lambda: not _alive(first_pid), what="the unloaded worker to exit")
    # A busy model is never unloaded to make room: 503 with Retry-After instead.
    stream = Stream(front, "/v1/completions", {"model": "beta", **SLOW})
    assert stream.next() is not None
    status, headers, body = call(front, "POST", "/v1/completions", {"model": "alpha"})
    assert status == 503 and body["error"]["code"] == "models_busy" and headers["retry-after"]
    stream.close()


def test_memory_budget(tmp_path, front_factory):
    fake_model(tmp_path, "small")
    fake_model(tmp_path, "big")
    config = Config(
        models=(
            str(tmp_path),
            ModelEntry(id="small", settings=(("memory_limit", 600 << 20),)),
            ModelEntry(id="big", settings=(("memory_limit", 2 << 30),)),
        ),
        memory_budget=1 << 30,
        port=0,
    )
    front = front_factory(config)
    status, _, body = call(front, "POST", "/v1/completions", {"model": "big"})
    assert status == 503 and body["error"]["code"] == "insufficient_memory"
    assert "memory budget" in body["error"]["message"]
    assert call(front, "POST", "/v1/completions", {"model": "small"})[0] == 200


def test_idle_unload(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path, idle_unload=1.0))
    assert call(front, "POST", "/v1/completions", {"model": "alpha"})[0] == 200
    assert status_of(front, "alpha")["state"] == "ready"
    wait_for(lambda: status_of(front, "alpha")["state"] == "unloaded", 30, "the idle unload")
    assert call(front, "POST", "/v1/completions", {"model": "alpha"})[0] == 200
    assert status_of(front, "alpha")["loads"] == 2


def test_a_killed_worker_ends_its_stream_cleanly_and_restarts(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path))
    doomed = Stream(front, "/v1/chat/completions", {"model": "alpha", **SLOW})
    other = Stream(
        front, "/v1/chat/completions", {"model": "beta", "stream": True, "n": 60, "delay": 0.02}
    )
    assert json.loads(doomed.next())["model"] == "alpha"
    assert json.loads(other.next())["model"] == "beta"
    os.kill(status_of(front, "alpha")["pid"], signal.SIGKILL)
    rest = doomed.rest()
    assert rest[-1] == "[DONE]"
    error = json.loads(rest[-2])["error"]
    assert error["code"] == "worker_failed" and "SIGKILL" in error["message"]
    events = other.rest()  # the other model's stream goes on unharmed
    assert events[-1] == "[DONE]" and len(events) == 60 and "error" not in "".join(events)
    alpha = status_of(front, "alpha")
    assert alpha["state"] == "failed" and "SIGKILL" in alpha["last_error"]
    assert call(front, "POST", "/v1/completions", {"model": "alpha"})[0] == 200
    assert status_of(front, "alpha")["loads"] == 2


def test_anthropic_routes_get_anthropic_errors(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path))
    status, _, body = call(front, "POST", "/v1/messages", {"model": "gamma"})
    assert status == 404 and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "gamma" in body["error"]["message"]
    doomed = Stream(front, "/v1/messages", {"model": "alpha", **SLOW})
    assert doomed.next() is not None
    os.kill(status_of(front, "alpha")["pid"], signal.SIGKILL)
    rest = doomed.rest()
    error = json.loads(rest[-1])  # Anthropic's stream ends with an error event, no [DONE]
    assert error["type"] == "error" and "SIGKILL" in error["error"]["message"]


def test_crash_loop(tmp_path, front_factory):
    fake_model(tmp_path, "broken", fail="boom: no weights here")
    front = front_factory(Config(models=(str(tmp_path),), port=0))
    for _ in range(3):
        status, _, body = call(front, "POST", "/v1/completions", {"model": "broken"})
        assert status == 503 and body["error"]["code"] == "model_load_failed"
        assert "boom: no weights here" in body["error"]["message"]
    status, headers, body = call(front, "POST", "/v1/completions", {"model": "broken"})
    assert status == 503 and body["error"]["code"] == "crash_loop"
    assert "crash loop" in body["error"]["message"] and int(headers["retry-after"]) > 0
    assert status_of(front, "broken")["loads"] == 0
    # An explicit load tries again at once.
    status, _, body = call(front, "POST", "/admin/load", {"model": "broken"})
    assert status == 503 and body["error"]["code"] == "model_load_failed"


def test_unload_waits_then_cuts_running_requests_short(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path))
    stream = Stream(front, "/v1/completions", {"model": "alpha", **SLOW})
    assert stream.next() is not None
    status, _, body = call(front, "POST", "/admin/unload", {"model": "alpha", "timeout": 0.3})
    assert status == 200 and body == {
        "model": "alpha",
        "state": "unloaded",
        "waited_for": 1,
        "cancelled": 1,
    }
    rest = stream.rest()
    assert rest[-1] == "[DONE]" and "error" in json.loads(rest[-2])
    status, _, body = call(front, "POST", "/admin/load", {"model": "alpha"})
    assert status == 200 and body["state"] == "ready"
    assert call(front, "POST", "/admin/unload", {"model": "nope"})[0] == 404


def test_a_client_that_leaves_cancels_the_worker_job(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path))
    stream = Stream(front, "/v1/completions", {"model": "alpha", **SLOW})
    assert stream.next() is not None
    queue = lambda: call(front, "GET", "/v1/queue/stats")[2]["models"]["alpha"]  # noqa: E731
    assert queue()["running_sequences"] == 1 and queue()["in_flight"] == 1
    stream.close()
    wait_for(
        lambda: queue()["running_sequences"] == 0 and queue()["in_flight"] == 0, 30, "the cancel"
    )


def test_admin_routes_take_the_admin_key(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path, api_keys=("k",), admin_keys=("adm",)))
    bearer = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    assert call(front, "GET", "/admin/status")[0] == 401
    assert call(front, "GET", "/admin/status", headers=bearer("k"))[0] == 401
    assert call(front, "GET", "/admin/status", headers=bearer("adm"))[0] == 200
    assert call(front, "GET", "/v1/models", headers=bearer("k"))[0] == 200
    assert call(front, "GET", "/v1/models", headers=bearer("adm"))[0] == 401
    assert call(front, "POST", "/v1/completions", {"model": "alpha"}, bearer("k"))[0] == 200
    assert call(front, "GET", "/health")[0] == 200  # open to probes, as in one-model mode


def test_admin_routes_take_the_api_key_without_an_admin_key(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path, api_keys=("k",)))
    assert call(front, "GET", "/admin/status")[0] == 401
    assert call(front, "GET", "/admin/status", headers={"Authorization": "Bearer k"})[0] == 200
    status, _, body = call(
        front, "POST", "/admin/load", {"model": "alpha"}, {"Authorization": "Bearer k"}
    )
    assert status == 200 and body["state"] == "ready" and body["pid"]


def test_status_views_report_each_model(tmp_path, front_factory):
    front = front_factory(two_models(tmp_path))
    assert call(front, "POST", "/v1/completions", {"model": "alpha"})[0] == 200
    status, _, health = call(front, "GET", "/health")
    assert status == 200 and health["models"] == {"alpha": "ready", "beta": "unloaded"}
    models = {m["id"]: m for m in call(front, "GET", "/admin/status")[2]["models"]}
    assert models["alpha"]["pid"] and models["alpha"]["memory"]["mlx_active_bytes"] == 1
    assert models["beta"]["pid"] is None and models["beta"]["state"] == "unloaded"
    assert call(front, "GET", "/v1/mlx/status")[2]["models"]["alpha"]["model"]["id"] == "alpha"
    assert call(front, "GET", "/stats")[2]["models"]["beta"] == {"state": "unloaded"}
    _, headers, text = call(front, "GET", "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    loaded = {s.labels["model"]: s.value for s in families["mlxd_model_loaded"].samples}
    assert loaded == {"alpha": 1, "beta": 0}
    assert [s.labels for s in families["mlxd_ready"].samples] == [{"model": "alpha"}]
    assert headers["content-type"].startswith("text/plain")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
