"""The chat reply's deltas -> Anthropic content blocks and stream events, stop reasons, usage,
max_tokens cut to the context, and errors in Anthropic's shape. No model."""

from __future__ import annotations

import json

import pytest

from mlxd.api.anthropic_messages.errors import error_json
from mlxd.api.anthropic_messages.message import MessageBuilder, usage
from mlxd.api.anthropic_messages.routes import _renamed, _within_context
from mlxd.api.fields import Sampling
from mlxd.api.reasoning import ThinkMarkers
from mlxd.api.reply import ReplySpec
from mlxd.engine.events import Finished
from mlxd.transport.errors import HttpError, bad_request

from samples import CALL, fmt

# ----- replies -----


def run(spec: ReplySpec, pieces, done: Finished, **kwargs):
    message = MessageBuilder("m", spec.new(), done.prompt_tokens, **kwargs)
    events = [message.start()] + [e for p in pieces for e in message.feed(p)]
    return message, events + message.finish(done)


def finished(reason="stop", stop=None, cached=0):
    return Finished(0, reason, 20, 9, cached, stop)


def test_blocks_open_and_close_in_the_order_written():
    spec = ReplySpec(think=ThinkMarkers("<think>", "</think>"), tools=fmt("json_tools"))
    text = "<think>Hmm.</think>Let me look." + CALL
    message, events = run(spec, list(text), finished())
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text", "tool_use"]
    assert names.count("content_block_stop") == 3
    for n, d in events:  # every event's data names its own type
        assert d["type"] == n
    body = message.whole()
    assert [b["type"] for b in body["content"]] == ["thinking", "text", "tool_use"]
    assert body["content"][0] == {"type": "thinking", "thinking": "Hmm.", "signature": ""}
    assert body["content"][1] == {"type": "text", "text": "Let me look."}
    call = body["content"][2]
    assert call["id"].startswith("toolu_") and call["input"] == {"city": "Paris"}
    partial = [
        d["delta"]["partial_json"] for n, d in events if d.get("delta", {}).get("partial_json")
    ]
    assert [json.loads(p) for p in partial] == [{"city": "Paris"}]
    assert body["stop_reason"] == "tool_use" and body["id"].startswith("msg_")


def test_omitted_thinking_keeps_the_block_without_its_text():
    spec = ReplySpec(think=ThinkMarkers("<think>", "</think>"))
    message, events = run(spec, ["<think>secret</think>Paris"], finished(), show_thinking=False)
    assert message.whole()["content"][0]["thinking"] == ""
    assert not any(d.get("delta", {}).get("type") == "thinking_delta" for _, d in events)


@pytest.mark.parametrize(
    "done,kwargs,reason,sequence",
    [
        (finished(), {}, "end_turn", None),
        (finished("length"), {}, "max_tokens", None),
        (
            finished("length"),
            {"length_reason": "model_context_window_exceeded"},
            "model_context_window_exceeded",
            None,
        ),
        (finished(stop="END"), {"stop_sequences": ("END",)}, "stop_sequence", "END"),
        (finished(stop="</tool_call>"), {"stop_sequences": ("END",)}, "end_turn", None),
    ],
)
def test_stop_reasons(done, kwargs, reason, sequence):
    message, events = run(ReplySpec(), ["Hi"], done, **kwargs)
    assert (message.stop_reason, message.stop_sequence) == (reason, sequence)
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"] == {"stop_reason": reason, "stop_sequence": sequence}


def test_usage_counts_the_cached_part_apart():
    assert usage(20, 9, 12) == {
        "input_tokens": 8,
        "output_tokens": 9,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 12,
    }
    message, events = run(ReplySpec(), ["Hi"], finished(cached=12))
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] == 20 and start["content"] == []
    assert start["stop_reason"] is None
    assert events[-2][1]["usage"] == usage(20, 9, 12) == message.whole()["usage"]


def test_max_tokens_past_the_context_is_cut_to_fit():
    s = Sampling(max_tokens=32000, temperature=None, top_p=None, stop=(), seed=None)
    cut, clamped = _within_context(s, 1000, 4096)
    assert cut.max_tokens == 3096 and clamped
    assert _within_context(s, 1000, 64000) == (s, False)
    assert _within_context(s, 5000, 4096) == (s, False)  # refused later, as chat refuses it


# ----- errors -----


@pytest.mark.parametrize(
    "status,kind",
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
    ],
)
def test_error_types_follow_the_status(status, kind):
    body = error_json(HttpError(status, "x", "went wrong"))
    assert body == {"type": "error", "error": {"type": kind, "message": "went wrong"}}


def test_an_error_message_names_its_field():
    assert error_json(bad_request("must be a string", "model"))["error"]["message"] == (
        "model: must be a string"
    )
    assert error_json(bad_request("'model' must be a string", "model"))["error"]["message"] == (
        "'model' must be a string"
    )


def test_chat_field_names_become_the_body_s_own():
    err = _renamed(bad_request("tools[2].function.parameters: bad", "tools[2].function.parameters"))
    assert (err.param, err.message) == ("tools[2].input_schema", "tools[2].input_schema: bad")
    assert _renamed(bad_request("x", "response_format")).param == "output_config.format"
    assert _renamed(bad_request("x", "messages")).param == "messages"
