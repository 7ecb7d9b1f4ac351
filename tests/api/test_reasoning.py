"""Thinking models: <think>...</think> split into reasoning_content (whole, one character at a
time, with trailing text), a prompt that opens the block, and the request option and server
flag that turn the split off."""

from __future__ import annotations

import json

import pytest

from mlxd.api.reasoning import ThinkMarkers, opens_thinking
from mlxd.api.reply import ReplySpec
from mlxd.api.schema import ChatRequest
from mlxd.transport.errors import HttpError

from helpers import sdk
from samples import CALL, WEATHER, fmt
from scripted import scripted_server

THINK = ThinkMarkers("<think>", "</think>")
ASK = [{"role": "user", "content": "Capital of France?"}]

CASES = [
    # (reply text, prompt opened the block, reasoning, content)
    (
        "<think>\nThe user asks.\nIt is Paris.\n</think>\n\nParis.",
        False,
        "The user asks.\nIt is Paris.",
        "Paris.",
    ),
    ("The user asks.\n</think>\n\nParis.", True, "The user asks.", "Paris."),
    ("No thinking at all.", False, None, "No thinking at all."),
    ("<think></think>Paris.", False, None, "Paris."),
    (
        "<think>first</think>Paris<think>again</think> and more",
        False,
        "firstagain",
        "Paris and more",
    ),
]


def run(spec: ReplySpec, pieces, reason="stop"):
    reply = spec.new()
    deltas = [d for p in pieces for d in reply.feed(p)]
    tail, reason = reply.finish(reason)
    return reply.message_fields(), deltas + tail, reason


@pytest.mark.parametrize("text,opened,reasoning,content", CASES)
@pytest.mark.parametrize("split", ["whole", "chars", "trailing"])
def test_thinking_is_split_out(text, opened, reasoning, content, split):
    pieces = {"whole": [text], "chars": list(text), "trailing": [text, "\n\n"]}[split]
    message, deltas, reason = run(ReplySpec(think=THINK, starts_thinking=opened), pieces)
    assert message["reasoning_content"] == reasoning
    assert message["content"] == content + ("\n\n" if split == "trailing" else "")
    assert "".join(d.get("reasoning_content", "") for d in deltas) == (reasoning or "")
    assert "".join(d.get("content", "") for d in deltas) == message["content"]
    assert reason == "stop"


def test_thinking_cut_short_is_all_reasoning():
    message, _, reason = run(ReplySpec(think=THINK), ["<think>Let me see, the capi"], "length")
    assert message == {"content": "", "reasoning_content": "Let me see, the capi"}
    assert reason == "length"


def test_a_tool_call_may_start_inside_thinking():
    # As mlx-lm's state machine: a call block opens from the thinking state too.
    text = "<think>I need the weather." + CALL
    message, deltas, reason = run(ReplySpec(think=THINK, tools=fmt("json_tools")), list(text))
    assert message["reasoning_content"] == "I need the weather."
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"
    assert reason == "tool_calls"


def test_no_split_leaves_the_text_as_written():
    text = "<think>\nhmm\n</think>\n\nParis."
    message, _, _ = run(ReplySpec(), list(text))
    assert message == {"content": text}


def test_reasoning_format_field():
    body = {"messages": ASK, "reasoning_format": "none"}
    assert ChatRequest.from_json(json.dumps(body).encode()).reasoning_format == "none"
    with pytest.raises(HttpError) as info:
        ChatRequest.from_json(json.dumps({**body, "reasoning_format": "hidden"}).encode())
    assert info.value.param == "reasoning_format"


# ----- end to end on a scripted thinking model (the template opens <think>) -----


@pytest.fixture(scope="module")
def think_server(tmp_path_factory):
    with scripted_server(tmp_path_factory, "think") as server:
        yield server


@pytest.fixture()
def client(think_server):
    return sdk(think_server.url)


def test_prompt_opens_thinking(think_server):
    tok = think_server.tokenizer
    prompt = tok.apply_chat_template(ASK, add_generation_prompt=True)
    assert opens_thinking(tok, prompt)
    closed = tok.apply_chat_template(ASK, add_generation_prompt=True, enable_thinking=False)
    assert not opens_thinking(tok, closed)


def test_reasoning_content_whole_and_streamed(think_server, client):
    think_server.say("It is Paris.\n</think>\n\nParis.")
    resp = client.chat.completions.create(model="m", messages=ASK, max_tokens=100)
    message = resp.choices[0].message
    assert message.content == "Paris." and message.reasoning_content == "It is Paris."
    stream = client.chat.completions.create(model="m", messages=ASK, max_tokens=100, stream=True)
    chunks = [c.choices[0].delta for c in stream if c.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in chunks) == "It is Paris."
    assert "".join(d.content or "" for d in chunks) == "Paris."


def test_request_turns_the_split_off(think_server, client):
    think_server.say("It is Paris.\n</think>\n\nParis.")
    resp = client.chat.completions.create(
        model="m", messages=ASK, max_tokens=100, extra_body={"reasoning_format": "none"}
    )
    message = resp.choices[0].message
    assert message.content == "It is Paris.\n</think>\n\nParis."
    assert getattr(message, "reasoning_content", None) is None


def test_server_flag_turns_the_split_off(tmp_path_factory):
    with scripted_server(tmp_path_factory, "think", reasoning_format="none") as server:
        server.say("Hmm.</think>Paris.")
        client = sdk(server.url)
        resp = client.chat.completions.create(model="m", messages=ASK, max_tokens=50)
        assert resp.choices[0].message.content == "Hmm.</think>Paris."
        resp = client.chat.completions.create(
            model="m", messages=ASK, max_tokens=50, extra_body={"reasoning_format": "deepseek"}
        )
        assert resp.choices[0].message.content == "Paris."
        assert resp.choices[0].message.reasoning_content == "Hmm."


def test_tools_and_thinking_together(think_server, client):
    think_server.say("Need weather.\n</think>\n\n" + CALL)
    resp = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], max_tokens=200)
    message = resp.choices[0].message
    assert message.reasoning_content == "Need weather." and message.content is None
    assert message.tool_calls[0].function.name == "get_weather"


@pytest.mark.parametrize("reasoning_format", ["auto", "none"])
def test_a_constrained_reply_closes_thinking_first(think_server, client, reasoning_format):
    think_server.say("I would rather think at length about this.")
    resp = client.chat.completions.create(
        model="m",
        messages=ASK,
        max_tokens=40,
        response_format={"type": "json_object"},
        extra_body={"reasoning_format": reasoning_format},
    )
    message = resp.choices[0].message
    assert isinstance(json.loads(message.content), dict)
    assert message.reasoning_content is None
