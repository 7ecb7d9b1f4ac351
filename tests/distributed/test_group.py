"""Two ranks on this machine (MLX's launcher, the ring backend on 127.0.0.1) serve the tiny model
tensor parallel and pipeline parallel: the same greedy (and seeded, and schema-constrained) text
as one process, alone and in a batch of four streams with one cancelled in the middle; a rank
that hangs or dies fails the requests in flight and takes the server down within the deadline."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time

import pytest

from mlxd.service.config import Config
from mlxd.service.run import EXIT_ENGINE_FAILED

from group import Group
from helpers import ServerThread, get_json

STEP_TIMEOUT_S = 3.0
SHUTDOWN_S = 2.0
NO_EOS = {"2": -100}  # <|im_end|>: streams run to max_tokens
STREAM_PROMPTS = ["Hello world", "The quick brown fox", "What is the capital", "Numbers 0123"]
REQUESTS = [
    ("/v1/completions", {"prompt": "Hello world", "temperature": 0}),
    ("/v1/completions", {"prompt": "Café crème", "temperature": 0, "max_tokens": 24}),
    ("/v1/completions", {"prompt": "Hello world", "temperature": 0.9, "seed": 11}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}),
    (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "json please"}],
            "max_tokens": 40,
            "temperature": 0,  # unseeded sampling (the default 0.7) would differ run to run
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "t",
                    "schema": {"type": "object", "properties": {"n": {"type": "integer"}}},
                },
            },
        },
    ),
]


STEP_TOKENS = 4096  # fixed for both servers (see reference)


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    # A fixed per-step token budget: the adaptive one follows measured step times, so two
    # servers on a busy machine would cut prefills differently (and round differently).
    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0, max_tokens=16, max_step_tokens=STEP_TOKENS)
    ).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module", params=["tensor", "pipeline"])
def group(request, tiny_model_dir, tmp_path_factory):
    args = ["--step-timeout", str(STEP_TIMEOUT_S), "--shutdown-timeout", str(SHUTDOWN_S)]
    args += ["--max-step-tokens", str(STEP_TOKENS)]
    if request.param == "pipeline":
        args.append("--pipeline")
    g = Group(tiny_model_dir, tmp_path_factory.mktemp("group"), *args)
    try:
        yield g.wait_ready()
    finally:
        g.close()


def text_of(path: str, body: dict) -> str:
    choice = body["choices"][0]
    return choice["text"] if path == "/v1/completions" else choice["message"]["content"]


def ask(url: str, path: str, body: dict) -> str:
    status, reply = get_json(url + path, body)
    assert status == 200, reply
    return text_of(path, reply)


def stream(url: str, prompt: str, out: dict, cancel_after: int | None = None) -> None:
    """A streaming completion; with ``cancel_after``, hang up after that many chunks."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    body = {"prompt": prompt, "max_tokens": 48, "temperature": 0, "stream": True}
    try:
        conn.request("POST", "/v1/completions", json.dumps({**body, "logit_bias": NO_EOS}))
        resp = conn.getresponse()
    except OSError as exc:  # the server is already gone: that is a clean failure too
        out[prompt] = ("error", f"no connection: {exc}")
        return
    if resp.status != 200:  # failed before the stream began
        out[prompt] = ("error", json.loads(resp.read())["error"]["message"])
        return
    text, chunks = "", 0
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        data = json.loads(line[6:])
        if "error" in data:
            out[prompt] = ("error", data["error"]["message"])
            break
        text += data["choices"][0]["text"]
        chunks += 1
        if cancel_after is not None and chunks >= cancel_after:
            break
    conn.close()
    out.setdefault(prompt, ("text", text))


def test_single_requests_match_one_process(group, reference):
    for path, body in REQUESTS:
        assert ask(group.url, path, body) == ask(reference.url, path, body), (path, body)


def test_four_streams_with_a_cancel_match_one_process(group, reference):
    greedy = {"max_tokens": 48, "temperature": 0, "logit_bias": NO_EOS}
    want = {
        p: ask(reference.url, "/v1/completions", {"prompt": p, **greedy}) for p in STREAM_PROMPTS
    }
    got: dict = {}
    threads = [
        threading.Thread(target=stream, args=(group.url, p, got, 3 if i == 1 else None))
        for i, p in enumerate(STREAM_PROMPTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    cancelled = STREAM_PROMPTS[1]
    assert want[cancelled].startswith(got[cancelled][1])
    assert {p: got[p] for p in want if p != cancelled} == {
        p: ("text", t) for p, t in want.items() if p != cancelled
    }
    deadline = time.monotonic() + 10
    while get_json(group.url + "/v1/mlx/status")[1]["queue"]["running_sequences"]:
        assert time.monotonic() < deadline, "the cancelled stream kept running"
        time.sleep(0.05)
    _, health = get_json(group.url + "/health")
    assert health["group"]["size"] == 2 and health["group"]["backend"] == "ring"
    assert [r["rank"] for r in health["group"]["ranks"]] == [0, 1]
    assert all(r["active_bytes"] > 0 and r["host"] for r in health["group"]["ranks"])


def test_losing_a_rank_fails_requests_and_stops_the_server(group, request):
    """Tensor parallel: rank 1 hangs (SIGSTOP), so only the watchdog can notice. Pipeline: rank 1
    dies (SIGKILL), which the ring backend reports at once."""
    follower = group.rank_pid(1)
    hang = request.node.callspec.params["group"] == "tensor"
    started = time.monotonic()
    os.kill(follower, signal.SIGSTOP if hang else signal.SIGKILL)
    try:
        got: dict = {}
        stream(group.url, "Hello world", got)
        kind, message = got["Hello world"]
        assert kind == "error", "the stream should fail, not hang"
        if hang:
            assert "no step of the group finished" in message
        # Unhealthy until the process is gone (as for a dead generation thread): 503, or no
        # answer once the shutdown has closed the socket.
        # Once the shutdown has begun, every request (health too) gets the server's own 503.
        status, health = get_json(group.url + "/health")
        assert status in (503, None)
        if status == 503:
            shutting_down = health.get("error", {}).get("message") == "the server is shutting down"
            assert health.get("status") == "failed" or shutting_down, health
        while group.proc.poll() is None and get_json(group.url + "/health")[0] is not None:
            assert time.monotonic() - started < STEP_TIMEOUT_S + SHUTDOWN_S + 15
            time.sleep(0.1)
    finally:
        if hang:
            os.kill(follower, signal.SIGKILL)
    group.proc.wait(30)
    if hang:  # the launcher saw rank 0 leave with the engine's exit status
        assert re.search(rf"rank 0 exited with code {EXIT_ENGINE_FAILED}\b", group.log())
