"""Request bodies -> records: everything honoured or refused with a 400 naming the field."""

from __future__ import annotations

import json

import pytest

from mlxd.api.schema import ChatRequest, CompletionRequest
from mlxd.transport.errors import HttpError

USER = [{"role": "user", "content": "hi"}]


def chat(**fields) -> ChatRequest:
    return ChatRequest.from_json(json.dumps({"messages": USER, **fields}).encode())


def refused(parse, body, param=None) -> HttpError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(HttpError) as info:
        parse(raw)
    assert info.value.status == 400
    if param is not None:
        assert info.value.param == param, info.value.message
    return info.value


def test_minimal_chat_defaults():
    req = chat()
    assert req.messages == ({"role": "user", "content": "hi"},)
    assert not req.stream and not req.include_usage
    s = req.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.stop, s.seed) == (None, None, None, (), None)


def test_full_chat_is_honoured():
    req = chat(
        model="x",
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=9,
        temperature=0,
        top_p=0.5,
        stop="END",
        seed=7,
        n=1,
        presence_penalty=0,
        best_of=None,
        user="u",
        messages=[
            {"role": "developer", "content": "be brief"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
    )
    assert req.stream and req.include_usage and req.model == "x"
    assert req.messages == (
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "ab"},
    )
    assert req.sampling.stop == ("END",) and req.sampling.seed == 7
    assert req.sampling.temperature == 0.0 and req.sampling.max_tokens == 9


def test_sampling_extensions_are_honoured():
    s = chat(
        n=3,
        presence_penalty=0.5,
        frequency_penalty=-1,
        logprobs=True,
        top_logprobs=2,
        logit_bias={"5": -100, "7": 3.5},
        top_k=40,
        min_p=0.05,
        repetition_penalty=1.1,
    ).sampling
    assert (s.n, s.presence_penalty, s.frequency_penalty, s.logprobs) == (3, 0.5, -1.0, 2)
    assert s.logit_bias == ((5, -100.0), (7, 3.5))
    assert (s.top_k, s.min_p, s.repetition_penalty) == (40, 0.05, 1.1)
    assert chat(logprobs=True).sampling.logprobs == 0
    assert chat(logprobs=False).sampling.logprobs is None
    assert CompletionRequest.from_json(b'{"prompt": "x", "logprobs": 3}').sampling.logprobs == 3


def test_max_completion_tokens_and_max_tokens():
    assert chat(max_completion_tokens=5).sampling.max_tokens == 5
    assert chat(max_completion_tokens=5, max_tokens=5).sampling.max_tokens == 5
    refused(
        ChatRequest.from_json,
        {"messages": USER, "max_tokens": 4, "max_completion_tokens": 5},
        "max_completion_tokens",
    )


def test_nulls_mean_not_given():
    req = chat(temperature=None, stop=None, n=None, logprobs=None, stream=None)
    assert req.sampling.temperature is None and not req.stream


@pytest.mark.parametrize(
    "body,param",
    [
        (b"", None),
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'"text"', None),
        (b"\xff\xfe{}", None),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', None),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        ({"messages": USER, "temperature": 3}, "temperature"),
        ({"messages": USER, "temperature": -0.1}, "temperature"),
        ({"messages": USER, "temperature": "hot"}, "temperature"),
        ({"messages": USER, "temperature": True}, "temperature"),
        ({"messages": USER, "top_p": 0}, "top_p"),
        ({"messages": USER, "top_p": 1.5}, "top_p"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"messages": USER, "max_tokens": 2.5}, "max_tokens"),
        ({"messages": USER, "max_tokens": True}, "max_tokens"),
        ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": USER, "stop": [""]}, "stop"),
        ({"messages": USER, "stop": [1]}, "stop"),
        ({"messages": USER, "stop": "x" * 300}, "stop"),
        ({"messages": USER, "seed": "7"}, "seed"),
        ({"messages": USER, "stream": "yes"}, "stream"),
        ({"messages": USER, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": USER, "stream": True, "stream_options": {"x": 1}}, "stream_options.x"),
        ({"messages": USER, "n": 0}, "n"),
        ({"messages": USER, "n": 17}, "n"),
        ({"messages": USER, "presence_penalty": 2.5}, "presence_penalty"),
        ({"messages": USER, "frequency_penalty": -3}, "frequency_penalty"),
        ({"messages": USER, "logprobs": 3}, "logprobs"),
        ({"messages": USER, "top_logprobs": 3}, "top_logprobs"),
        ({"messages": USER, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": USER, "logit_bias": {"x": 10}}, "logit_bias"),
        ({"messages": USER, "logit_bias": {"5": 101}}, "logit_bias"),
        ({"messages": USER, "top_k": -1}, "top_k"),
        ({"messages": USER, "min_p": 2}, "min_p"),
        ({"messages": USER, "repetition_penalty": 0}, "repetition_penalty"),
        ({"messages": USER, "response_format": {"type": "xml"}}, "response_format"),
        ({"messages": USER, "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"messages": USER, "tool_choice": "auto"}, "tool_choice"),
        ({"messages": USER, "frobnicate": 1}, "frobnicate"),
        ({"messages": USER, "model": 5}, "model"),
    ],
)
def test_chat_refusals(body, param):
    refused(ChatRequest.from_json, body, param)


def test_unknown_field_names_itself():
    err = refused(ChatRequest.from_json, {"messages": USER, "top_kk": 3}, "top_kk")
    assert "top_kk" in err.message and err.code == "unknown_parameter"


def test_completion_prompts():
    parse = CompletionRequest.from_json
    assert parse(b'{"prompt": "Once"}').prompt == "Once"
    assert parse(b'{"prompt": ["Once"]}').prompt == "Once"
    assert parse(b'{"prompt": [1, 2, 3]}').prompt == (1, 2, 3)
    assert parse(b'{"prompt": [[1, 2]]}').prompt == (1, 2)
    assert parse(b'{"prompt": "x", "echo": true}').echo


@pytest.mark.parametrize(
    "body,param",
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, -2]}, "prompt"),
        ({"prompt": "x", "echo": 1}, "echo"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "suffix": "end"}, "suffix"),
        ({"prompt": "x", "messages": USER}, "messages"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": "x", "logprobs": True}, "logprobs"),
        ({"prompt": "x", "top_logprobs": 2}, "top_logprobs"),
    ],
)
def test_completion_refusals(body, param):
    refused(CompletionRequest.from_json, body, param)
