"""/v1/messages beside chat on one engine: both in one batch, pings while nothing else is sent,
the API key as x-api-key, and errors in Anthropic's shape raising the SDK's own exception classes
(400, 401, 404, 405, 429, 504, and an error event that ends a stream)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anthropic
import pytest

from mlxd.api.anthropic_messages import routes

from helpers import (
    ServerThread,
    SlowModel,
    check_message_stream,
    keep,
    messages_client,
    raw_stream,
    sdk,
)

ASK = [{"role": "user", "content": "Hi"}]
KEY = "sk-anthropic-test"
GREEDY = {"temperature": 0}  # the SDK has no temperature argument any more: extra_body


class DecodeLog(SlowModel):
    """Records the batch size of every decode step (one new token per sequence)."""

    def __init__(self, model, delay: float) -> None:
        super().__init__(model, delay)
        self.batches: list[int] = []

    def __call__(self, inputs, *args, **kwargs):
        if inputs.ndim == 2 and inputs.shape[1] == 1:
            self.batches.append(inputs.shape[0])
        return super().__call__(inputs, *args, **kwargs)


@pytest.fixture(scope="module")
def batch_server(tiny_model_dir):
    from mlxd.service.config import Config

    logs: list[DecodeLog] = []

    def wrap(model):
        logs.append(DecodeLog(model, 0.02))
        return logs[-1]

    srv = ServerThread(Config(model=str(tiny_model_dir), port=0), model_wrapper=wrap).start()
    srv.logs = logs
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def busy_server(tiny_model_dir):
    """One sequence at a time, one more waiting, every request done within 3 s, a key."""
    from mlxd.service.config import Config

    config = Config(
        model=str(tiny_model_dir),
        port=0,
        api_keys=(KEY,),
        max_batch_size=1,
        queue_size=1,
        request_timeout=3.0,
    )
    srv = ServerThread(config, model_wrapper=lambda m: SlowModel(m, 0.05)).start()
    yield srv
    srv.close()


def test_messages_and_chat_share_one_batch(batch_server):
    url = batch_server.url

    def chat():
        reply = sdk(url).chat.completions.create(
            model="m", messages=ASK, max_tokens=12, temperature=0
        )
        return reply.choices[0].message.content

    def whole():
        msg = messages_client(url).messages.create(
            model="m", messages=ASK, max_tokens=12, extra_body=GREEDY
        )
        return "".join(b.text for b in msg.content)

    def streamed():
        with messages_client(url).messages.stream(
            model="m", messages=ASK, max_tokens=12, extra_body=GREEDY
        ) as stream:
            return "".join(stream.text_stream)

    with ThreadPoolExecutor(6) as pool:
        texts = [f.result() for f in [pool.submit(f) for f in (chat, whole, streamed) * 2]]
    assert len(set(texts)) == 1, texts  # one prompt, greedy: one reply, whichever API asked
    assert max(batch_server.logs[-1].batches) >= 2  # decoded together


def test_pings_while_nothing_else_is_sent(batch_server, monkeypatch):
    monkeypatch.setattr(routes, "PING_INTERVAL_S", 0.005)  # decode steps take 0.02 s here
    body = {"model": "m", "max_tokens": 8, "messages": ASK, "stream": True, **GREEDY}
    status, events = raw_stream(batch_server.url, "/v1/messages", body)
    assert status == 200
    check_message_stream(events)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"] and names.count("ping") >= 2


# ----- keys and errors -----


def test_the_key_comes_as_x_api_key_or_bearer(busy_server):
    url = busy_server.url
    ok = messages_client(url, api_key=KEY).messages.create(model="m", max_tokens=1, messages=ASK)
    assert ok.type == "message"
    bearer = keep(anthropic.Anthropic(base_url=url, auth_token=KEY, max_retries=0))
    assert bearer.messages.create(model="m", max_tokens=1, messages=ASK).type == "message"
    with pytest.raises(anthropic.AuthenticationError) as info:
        messages_client(url, api_key="wrong").messages.create(model="m", max_tokens=1, messages=ASK)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided"},
    }
    # The OpenAI routes keep their own shape.
    status, body = raw_stream(url, "/v1/chat/completions", {"messages": ASK})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_errors_raise_the_sdk_classes(busy_server):
    client = messages_client(busy_server.url, api_key=KEY)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="m", max_tokens=5, messages=ASK, extra_body={"foo": 1})
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "foo" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x" * 6000}]
        )
    assert "context length" in info.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="m", messages=[])
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("no-such-model")
    status, body = get(busy_server, "/v1/messages")
    assert status == 405 and body["error"]["type"] == "invalid_request_error"


def get(srv, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path, headers={"x-api-key": KEY})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def stats(srv) -> dict:
    return get(srv, "/stats")[1]


def wait_for(srv, key: str) -> None:
    deadline = time.monotonic() + 30
    while stats(srv)[key] < 1:
        assert time.monotonic() < deadline, stats(srv)
        time.sleep(0.01)


def test_a_full_queue_is_429_and_a_timeout_ends_the_stream(busy_server):
    """A chat stream holds the one slot (its eos forbidden) until --request-timeout ends it; a
    streamed message waits behind it and gets the timeout as its last event; a third request
    finds the queue full."""
    url = busy_server.url
    eos = "2"  # <|im_end|> in the tiny model's vocabulary

    def occupy():
        client = sdk(url).with_options(api_key=KEY)
        with client.chat.completions.create(
            model="m", messages=ASK, max_tokens=400, logit_bias={eos: -100}, stream=True
        ) as stream:  # closed on the way out, also when the timeout error ends it
            with pytest.raises(Exception, match="longer than"):  # OpenAI's error event
                list(stream)

    occupant = threading.Thread(target=occupy)
    occupant.start()
    wait_for(busy_server, "running_sequences")
    waiting: list = []
    body = {"model": "m", "max_tokens": 50, "messages": ASK, "stream": True}
    headers = {"Content-Type": "application/json", "x-api-key": KEY}
    queued = threading.Thread(
        target=lambda: waiting.append(raw_stream(url, "/v1/messages", body, headers))
    )
    queued.start()
    wait_for(busy_server, "waiting_requests")
    with pytest.raises(anthropic.RateLimitError) as info:
        messages_client(url, api_key=KEY).messages.create(model="m", max_tokens=5, messages=ASK)
    assert info.value.body["error"]["type"] == "rate_limit_error"
    queued.join(30)
    occupant.join(30)
    [(status, events)] = waiting
    assert status == 200 and events[0][0] == "message_start"
    name, data = events[-1]
    assert name == "error" and data["error"]["type"] == "timeout_error"
