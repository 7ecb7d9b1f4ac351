"""The front end of --models with real workers (mlxd itself, on tiny models): chat through the
OpenAI SDK to two models, streams passed through as they come, per-model metrics, and a worker
killed with SIGKILL mid-stream while the other model's stream goes on."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlxd.service.config import Config

from helpers import sdk
from routerkit import Stream, call, status_of
from tinymodel import build_tiny_model

EOS = 2  # <|im_end|> in tests/tinymodel.py
# A stream long enough to be killed in the middle: the end of sequence is banned.
LONG = {
    "prompt": "Once upon a time",
    "max_tokens": 4000,
    "stream": True,
    "logit_bias": {str(EOS): -100},
}


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    from routerkit import FrontThread

    root = tmp_path_factory.mktemp("models")
    # A long context, so a stream can run for seconds; two copies under two names.
    build_tiny_model(root / "alpha", max_position_embeddings=16384)
    shutil.copytree(root / "alpha", root / "beta")
    front = FrontThread(Config(models=(str(root),), port=0, max_tokens=16), worker=None).start()
    yield front
    front.close()


def test_two_models_through_the_sdk(front):
    client = sdk(front.url)
    for name in ("alpha", "beta"):
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert reply.model == name and reply.usage.completion_tokens > 0
    chunks = list(
        client.completions.create(model="beta", prompt="Hello", max_tokens=4, stream=True)
    )
    assert chunks and all(c.model == "beta" for c in chunks)
    assert {m.id: m.model_extra["loaded"] for m in client.models.list()} == {
        "alpha": True,
        "beta": True,
    }
    text = call(front, "GET", "/metrics")[2].decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    tokens = {s.labels.get("model"): s.value for s in families["mlxd_completion_tokens"].samples}
    assert tokens["alpha"] > 0 and tokens["beta"] > 0
    queue = call(front, "GET", "/v1/queue/stats")[2]["models"]
    assert queue["alpha"]["max_batch_size"] == 8 and queue["beta"]["state"] == "ready"


def test_kill_9_mid_stream(front):
    doomed = Stream(front, "/v1/completions", {"model": "alpha", **LONG})
    other = Stream(front, "/v1/completions", {"model": "beta", **LONG, "max_tokens": 200})
    assert doomed.status == 200 and other.status == 200
    for _ in range(3):
        assert json.loads(doomed.next())["model"] == "alpha"
    victim = status_of(front, "alpha")["pid"]
    os.kill(victim, signal.SIGKILL)
    rest = doomed.rest()
    assert rest[-1] == "[DONE]"
    error = json.loads(rest[-2])["error"]
    assert error["code"] == "worker_failed" and "SIGKILL" in error["message"], error
    events = other.rest()
    assert events[-1] == "[DONE]" and not any("error" in json.loads(e) for e in events[:-1])
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    alpha = status_of(front, "alpha")
    assert alpha["state"] == "failed" and "SIGKILL" in alpha["last_error"]
    reply = sdk(front.url).completions.create(model="alpha", prompt="Hi", max_tokens=3)
    assert reply.model == "alpha"
    alpha = status_of(front, "alpha")
    assert alpha["state"] == "ready" and alpha["loads"] == 2 and alpha["pid"] != victim


def test_a_worker_inherits_no_setting_but_the_pytorch_opt_out(monkeypatch):
    from mlxd.fleet.workers import worker_env

    monkeypatch.setenv("MLXD_MODELS", "/models")
    monkeypatch.setenv("MLX_SERVER_PORT", "9")
    monkeypatch.setenv("MLXD_TORCH", "1")
    env = worker_env()
    assert "MLXD_MODELS" not in env and "MLX_SERVER_PORT" not in env
    assert env["MLXD_TORCH"] == "1"
