"""The HTTP API end to end on the tiny model: raw HTTP on a real socket, port 0."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from helpers import ServerThread, SlowModel, get_json

CHAT = {"messages": [{"role": "user", "content": "Hello there"}]}


def post(server, path, body, timeout=30):
    return get_json(server.url + path, body, timeout=timeout)


def stream_events(server, path, body, timeout=30) -> list:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    raw = resp.read().decode()
    conn.close()
    events = []
    for block in raw.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_openai_error(status, body, expected_status, param=None):
    assert status == expected_status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param


def test_health_and_models(tiny_server):
    status, body = get_json(tiny_server.url + "/health")
    assert status == 200 and body["status"] == "ok"
    status, body = get_json(tiny_server.url + "/v1/models")
    assert status == 200 and body["object"] == "list"
    model_id = body["data"][0]["id"]
    assert model_id == "tiny-llama"
    status, body = get_json(tiny_server.url + f"/v1/models/{model_id}")
    assert status == 200 and body["id"] == model_id and body["object"] == "model"
    status, body = get_json(tiny_server.url + "/v1/models/nope")
    assert_openai_error(status, body, 404, "model")


def test_unknown_route_and_wrong_method(tiny_server):
    status, body = get_json(tiny_server.url + "/v2/nothing")
    assert_openai_error(status, body, 404)
    conn = http.client.HTTPConnection("127.0.0.1", tiny_server.port, timeout=10)
    conn.request("DELETE", "/v1/models")
    resp = conn.getresponse()
    body = json.loads(resp.read())
    assert_openai_error(resp.status, body, 405)
    assert set(resp.getheader("Allow").split(", ")) == {"GET", "HEAD"}
    conn.request("HEAD", "/health")  # HEAD: same headers as GET, no body, same connection
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b""
    assert int(resp.getheader("Content-Length")) > 0
    conn.close()


def test_chat_completion(tiny_server):
    status, body = post(
        tiny_server, "/v1/chat/completions", {**CHAT, "max_tokens": 5, "temperature": 0}
    )
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    use = body["usage"]
    assert use["prompt_tokens"] > 0 and 0 < use["completion_tokens"] <= 5
    assert use["total_tokens"] == use["prompt_tokens"] + use["completion_tokens"]


def test_streamed_chat_matches_non_streamed(tiny_server):
    req = {**CHAT, "max_tokens": 8, "temperature": 0}
    _, whole = post(tiny_server, "/v1/chat/completions", req)
    events = stream_events(
        tiny_server,
        "/v1/chat/completions",
        {**req, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    final = chunks[-2]["choices"][0]
    assert final["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["usage"] is None for c in chunks[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == whole["choices"][0]["message"]["content"]


def test_stream_without_usage_has_no_usage_chunk(tiny_server):
    events = stream_events(
        tiny_server, "/v1/chat/completions", {**CHAT, "max_tokens": 3, "stream": True}
    )
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")


def test_completions_and_echo(tiny_server):
    req = {"prompt": "The quick brown", "max_tokens": 6, "temperature": 0}
    status, body = post(tiny_server, "/v1/completions", req)
    assert status == 200 and body["object"] == "text_completion"
    text = body["choices"][0]["text"]
    _, echoed = post(tiny_server, "/v1/completions", {**req, "echo": True})
    assert echoed["choices"][0]["text"] == "The quick brown" + text
    events = stream_events(tiny_server, "/v1/completions", {**req, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == text
    _, by_ids = post(tiny_server, "/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 2})
    assert by_ids["usage"]["prompt_tokens"] == 3


def test_stop_string_never_appears(tiny_server):
    req = {"prompt": "Hello", "max_tokens": 24, "temperature": 0}
    _, body = post(tiny_server, "/v1/completions", req)
    full = body["choices"][0]["text"]
    if len(full) < 6:
        pytest.skip("the random model ended early")
    stop = full[3:6]
    _, cut = post(tiny_server, "/v1/completions", {**req, "stop": [stop]})
    assert cut["choices"][0]["text"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    events = stream_events(tiny_server, "/v1/completions", {**req, "stop": stop, "stream": True})
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == full[: full.index(stop)]


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/chat/completions", {"model": "m"}, "messages"),
        ("/v1/chat/completions", {**CHAT, "n": 17}, "n"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"99999999": 5}}, "logit_bias"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 100000}, "max_tokens"),
        ("/v1/completions", {"prompt": [1, 99999999]}, "prompt"),
        ("/v1/completions", {"prompt": "x", "temperature": 9}, "temperature"),
    ],
)
def test_bad_requests_are_400_in_openai_shape(tiny_server, path, body, param):
    status, resp = post(tiny_server, path, body)
    assert_openai_error(status, resp, 400, param)


def test_malformed_json_is_400_and_connection_survives(tiny_server):
    conn = http.client.HTTPConnection("127.0.0.1", tiny_server.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", b"{oops", {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert_openai_error(resp.status, json.loads(resp.read()), 400)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()


def test_context_overflow_names_code(tiny_server):
    status, body = post(tiny_server, "/v1/chat/completions", {**CHAT, "max_tokens": 5000})
    assert_openai_error(status, body, 400, "max_tokens")
    assert body["error"]["code"] == "context_length_exceeded"


@pytest.fixture(scope="module")
def slow_server(tiny_model_dir):
    """Each forward pass takes >= 20 ms, so a 100-token generation takes >= 2 s."""
    from mlxd.service.config import Config

    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0, max_tokens=100),
        model_wrapper=lambda m: SlowModel(m, 0.02),
    ).start()
    yield srv
    srv.close()


LONG = {"prompt": "Hi", "max_tokens": 100, "temperature": 1.0, "stop": None}


def test_health_and_models_answer_during_generation_and_requests_queue(slow_server):
    results = {}

    def generate(key):
        results[key] = post(slow_server, "/v1/completions", LONG, timeout=60)

    workers = [threading.Thread(target=generate, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    time.sleep(0.3)  # both requests are in: one generating, one waiting
    started = time.monotonic()
    assert get_json(slow_server.url + "/health")[0] == 200
    assert get_json(slow_server.url + "/v1/models")[0] == 200
    assert time.monotonic() - started < 5  # not after the 20 s generation
    for w in workers:
        w.join(60)
    assert [results[i][0] for i in range(2)] == [200, 200]


def test_client_disconnect_cancels_generation(slow_server):
    engine = None
    sock = socket.create_connection(("127.0.0.1", slow_server.port))
    body = json.dumps({**LONG, "max_tokens": 1000, "stream": True}).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()
    # A 1000-token run would hold the engine for >= 20 s; the next request must not wait for it.
    started = time.monotonic()
    status, _ = post(slow_server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert status == 200
    assert time.monotonic() - started < 5
    del engine


def test_not_ready_answers_503_with_retry_after(tiny_model_dir):
    from mlxd.service.config import Config

    # Warm-up runs a handful of forward passes; at 1 s each the server stays "loading" a while.
    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0), model_wrapper=lambda m: SlowModel(m, 1.0)
    ).start(wait_ready=False)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        assert resp.status == 503 and resp.getheader("Retry-After")
        resp.read()
        conn.request("POST", "/v1/chat/completions", json.dumps(CHAT))
        resp = conn.getresponse()
        assert_openai_error(resp.status, json.loads(resp.read()), 503)
        assert resp.getheader("Retry-After")
        assert get_json(srv.url + "/v1/models")[0] == 200
    finally:
        conn.close()
        srv.close()


def test_shutdown_with_streams_in_flight_ends_each_cleanly(tiny_model_dir):
    """SIGTERM while 4 streams run: each finishes or ends with a final SSE error, nothing hangs,
    and new requests meanwhile get 503."""
    from mlxd.service.config import Config

    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0, shutdown_timeout=0.5),
        model_wrapper=lambda m: SlowModel(m, 0.02),
    ).start()
    outcomes, raws = [], []

    def stream(max_tokens):
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.request(
            "POST",
            "/v1/completions",
            json.dumps(
                {
                    "prompt": "Hi",
                    "max_tokens": max_tokens,
                    "stream": True,  # no eos: runs its length
                    "logit_bias": {"150": 100},
                }
            ),
        )
        raw = conn.getresponse().read().decode()
        conn.close()
        raws.append(raw)
        outcomes.append("error" if '"error"' in raw else "done")

    workers = [threading.Thread(target=stream, args=(n,)) for n in (5, 400, 400, 400)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    closer = threading.Thread(target=srv.close)
    closer.start()
    time.sleep(0.1)
    late = get_json(srv.url + "/health")
    for w in workers:
        w.join(30)
        assert not w.is_alive()
    closer.join(30)
    assert late[0] in (503, None)  # refused, or the listener was already closed
    assert sorted(outcomes) == ["done", "error", "error", "error"]
    assert all(raw.rstrip().endswith("data: [DONE]") for raw in raws)
    assert srv.code == 0
