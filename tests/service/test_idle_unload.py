"""--idle-unload with one model in one process: the model is dropped after the idle time (the
memory goes back), /health stays 200 with "state": "unloaded", and the next request loads it."""

from __future__ import annotations

import threading

import pytest

from mlxd.service.config import Config

from helpers import ServerThread, get_json
from routerkit import wait_for

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


# The unload's gc.collect() finalizes whatever earlier tests in this process left unclosed (a
# socket); the warnings that raises are theirs, not this test's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_idle_unload_then_load_on_demand(tiny_model_dir):
    srv = ServerThread(Config(model=str(tiny_model_dir), port=0, idle_unload=1.0)).start()
    try:
        status, health = get_json(srv.url + "/health")
        assert status == 200 and health["state"] == "ready"
        loaded = get_json(srv.url + "/v1/mlx/status")[1]["memory"]["active_bytes"]
        assert get_json(srv.url + "/v1/chat/completions", CHAT)[0] == 200
        wait_for(lambda: get_json(srv.url + "/health")[1]["state"] == "unloaded", 30, "unload")
        status, health = get_json(srv.url + "/health")
        assert status == 200 and health["status"] == "ok"
        queue = get_json(srv.url + "/v1/queue/stats")[1]["models"][health["model"]]
        assert queue["state"] == "unloaded" and queue["running_sequences"] == 0
        status, report = get_json(srv.url + "/v1/mlx/status")
        assert report["model"]["ready"] is False and report["memory"]["active_bytes"] < loaded
        # Requests that arrive while it is unloaded share one load, then are served.
        results = []
        threads = [
            threading.Thread(
                target=lambda: results.append(get_json(srv.url + "/v1/chat/completions", CHAT)[0])
            )
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [200, 200, 200]
        assert get_json(srv.url + "/health")[1]["state"] in ("ready", "unloaded")
    finally:
        srv.close()
