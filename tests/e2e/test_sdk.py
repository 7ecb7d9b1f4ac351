"""The real OpenAI Python SDK against mlxd on port 0 (tiny model)."""

from __future__ import annotations

import openai
import pytest

from helpers import sdk


@pytest.fixture(scope="module")
def client(tiny_server):
    return sdk(tiny_server.url)


def test_sdk_chat(client):
    resp = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=5,
        temperature=0,
    )
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 5


def test_sdk_streaming_chat_with_usage(client):
    stream = client.chat.completions.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text) >= 0 and chunks[-1].usage.completion_tokens <= 6


def test_sdk_completions(client):
    resp = client.completions.create(
        model="tiny-llama", prompt="Once upon", max_tokens=4, temperature=0
    )
    assert resp.object == "text_completion" and resp.usage.prompt_tokens > 0


def test_sdk_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-llama"]
    assert client.models.retrieve("tiny-llama").id == "tiny-llama"


def test_sdk_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-llama", messages=[], max_tokens=5)
    assert info.value.status_code == 400
    assert info.value.body["param"] == "messages"
