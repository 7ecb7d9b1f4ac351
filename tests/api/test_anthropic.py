"""/v1/messages through the real anthropic SDK, on tiny models scripted to say given text: text,
tool use (free, forced, fed back), thinking, stop sequences, prefill, count_tokens, the raw
event sequence, and Claude Code's request shape (tests/api/fixtures/claude_code.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import check_message_stream as check_sequence
from helpers import messages_client as client
from helpers import raw_stream, sdk
from samples import CALL, WEATHER
from scripted import Scripted, scripted_server

ASK = [{"role": "user", "content": "Weather in Paris?"}]
TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER["function"]["parameters"],
}
FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "claude_code.json").read_text())
# Claude Code's system prompt and tools run far past the tiny model's 1024 tokens.
LONG_CONTEXT = {"max_position_embeddings": 16384}


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    with scripted_server(tmp_path_factory, "tools", model=LONG_CONTEXT) as server:
        yield server


@pytest.fixture(scope="module")
def think_server(tmp_path_factory):
    with scripted_server(tmp_path_factory, "think") as server:
        yield server


# ----- text -----


def test_text_whole(tools_server: Scripted):
    tools_server.say("Hello there.")
    msg = client(tools_server.url).messages.create(model="m", max_tokens=50, messages=ASK)
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "Hello there."
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
    assert (msg.usage.cache_read_input_tokens, msg.usage.cache_creation_input_tokens) == (0, 0)


def test_text_streamed_event_by_event(tools_server: Scripted):
    tools_server.say("Hello there.")
    status, events = raw_stream(
        tools_server.url,
        "/v1/messages",
        {"model": "m", "max_tokens": 50, "messages": ASK, "stream": True},
    )
    assert status == 200
    check_sequence(events)
    assert [n for n, _ in events[:2]] == ["message_start", "ping"]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello there."
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] > 0
    tools_server.say("Hello there.")
    with client(tools_server.url).messages.stream(model="m", max_tokens=50, messages=ASK) as s:
        assert "".join(s.text_stream) == "Hello there."
        assert s.get_final_message().usage.input_tokens == delta["usage"]["input_tokens"]


def test_stop_sequences_and_max_tokens(tools_server: Scripted):
    c = client(tools_server.url)
    tools_server.say("one two three")
    msg = c.messages.create(model="m", max_tokens=50, messages=ASK, stop_sequences=["two", "xyz"])
    assert (msg.stop_reason, msg.stop_sequence, msg.content[0].text) == (
        "stop_sequence",
        "two",
        "one ",
    )
    tools_server.say("one two three four five six")
    msg = c.messages.create(model="m", max_tokens=2, messages=ASK)
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 2


def test_prefill_is_continued(tools_server: Scripted):
    tools_server.say(" Paris.")
    history = ASK + [{"role": "assistant", "content": "The answer is"}]
    msg = client(tools_server.url).messages.create(model="m", max_tokens=20, messages=history)
    # mlx-lm's detokenizer drops the first token's leading space, whatever the route.
    assert msg.content[0].text == "Paris."
    prompt = client(tools_server.url).messages.count_tokens(model="m", messages=history)
    plain = client(tools_server.url).messages.count_tokens(model="m", messages=ASK)
    assert prompt.input_tokens > plain.input_tokens  # the prefill is in the prompt


# ----- tools -----


def test_free_tool_use_and_its_result_fed_back(tools_server: Scripted):
    c = client(tools_server.url)
    tools_server.say("Let me check." + CALL)
    first = c.messages.create(model="m", max_tokens=200, messages=ASK, tools=[TOOL])
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert call.id.startswith("toolu_") and call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    tools_server.say("It is sunny in Paris.")
    history = ASK + [
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_x",
                    "content": "no",
                    "is_error": True,
                },
            ],
        },
    ]
    again = c.messages.create(model="m", max_tokens=60, messages=history, tools=[TOOL])
    assert again.content[0].text == "It is sunny in Paris." and again.stop_reason == "end_turn"
    assert again.usage.input_tokens > first.usage.input_tokens


def test_the_prompt_is_the_chat_prompt(tools_server: Scripted):
    """The same conversation, written for each API, renders the same prompt."""
    tools_server.say("ok")
    messages = ASK + [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "sunny"}],
        },
    ]
    counted = client(tools_server.url).messages.count_tokens(
        model="m", system="Be brief.", messages=messages, tools=[TOOL]
    )
    chat = sdk(tools_server.url).chat.completions.create(
        model="m",
        max_tokens=5,
        tools=[WEATHER],
        messages=[
            {"role": "system", "content": "Be brief."},
            *ASK,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    )
    assert counted.input_tokens == chat.usage.prompt_tokens


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_forced_tool_use_input_validates(tools_server: Scripted, choice):
    from mlxd.constrain.json_schema import validate

    tools_server.say("I would rather chat." + CALL.replace('"city"', '"town"'))
    msg = client(tools_server.url).messages.create(
        model="m", max_tokens=120, messages=ASK, tools=[TOOL], tool_choice=choice
    )
    assert [b.type for b in msg.content] == ["tool_use"] and msg.stop_reason == "tool_use"
    validate(msg.content[0].input, TOOL["input_schema"])


def test_streamed_tool_uses_assemble(tools_server: Scripted):
    c = client(tools_server.url)
    script = "Checking." + CALL + CALL.replace("Paris", "Oslo")
    tools_server.say(script)
    with c.messages.stream(model="m", max_tokens=300, messages=ASK, tools=[TOOL]) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert [b.input["city"] for b in final.content[1:]] == ["Paris", "Oslo"]
    tools_server.say(script)
    one = c.messages.create(
        model="m",
        max_tokens=300,
        messages=ASK,
        tools=[TOOL],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert [b.type for b in one.content] == ["text", "tool_use"] and one.stop_reason == "tool_use"


# ----- thinking -----


def test_thinking_comes_out_as_thinking_blocks(think_server: Scripted):
    c = client(think_server.url)
    think_server.say("The user asks.\n</think>\n\nParis.")
    msg = c.messages.create(
        model="m", max_tokens=60, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024}
    )
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert (msg.content[0].thinking, msg.content[1].text) == ("The user asks.", "Paris.")
    think_server.say("The user asks.\n</think>\n\nParis.")
    status, events = raw_stream(
        think_server.url,
        "/v1/messages",
        {
            "model": "m",
            "max_tokens": 60,
            "messages": ASK,
            "stream": True,
            "thinking": {"type": "adaptive"},
        },
    )
    check_sequence(events)
    kinds = [d["delta"]["type"] for n, d in events if n == "content_block_delta"]
    assert kinds[0] == "thinking_delta" and kinds[-1] == "text_delta"


def test_thinking_disabled_tells_the_template(think_server: Scripted):
    c = client(think_server.url)
    on = c.messages.count_tokens(model="m", messages=ASK)
    off = c.messages.count_tokens(model="m", messages=ASK, thinking={"type": "disabled"})
    assert off.input_tokens > on.input_tokens  # the template closed the block at once


# ----- Claude Code -----


def small(body: dict) -> dict:
    """The fixture's body with every kind of field kept but fewer tools and a shorter system
    prompt: the tiny tokenizer makes 10k tokens of it, minutes of prefill on a busy CPU."""
    system = [*body["system"][:2], {**body["system"][2], "text": body["system"][2]["text"][:400]}]
    return {**body, "system": system, "tools": body["tools"][:2]}


def test_claude_code_request_shape_is_counted_whole(tools_server: Scripted):
    """Every field of the whole request (cache_control on system, message and tool blocks, 16
    tools with draft-07 schemas, thinking and tool history, metadata.user_id, adaptive thinking,
    context_management, output_config) is read and rendered: count_tokens runs the same
    parsing and template as /v1/messages."""
    body = FIXTURE["body"]
    count = {
        k: v
        for k, v in body.items()
        if k not in ("max_tokens", "temperature", "metadata", "stream")
    }
    status, counted = raw_stream(
        tools_server.url, "/v1/messages/count_tokens?beta=true", count, FIXTURE["headers"]
    )
    assert status == 200 and counted["input_tokens"] > 5000, counted


def test_claude_code_request_shape_is_served(tools_server: Scripted):
    """Its headers (anthropic-beta, x-api-key...), ?beta=true and a max_tokens past the context
    are served, streamed and whole (with thinking budget_tokens 31999 as "think harder" sends)."""
    tools_server.say("It prints hello.")
    path, headers = FIXTURE["path"], FIXTURE["headers"]
    status, events = raw_stream(tools_server.url, path, small(FIXTURE["body"]), headers)
    assert status == 200, events
    check_sequence(events)
    delta = next(d for n, d in events if n == "message_delta")
    assert delta["delta"]["stop_reason"] == "end_turn"
    thinking = {"type": "enabled", "budget_tokens": 31999}
    body = dict(small(FIXTURE["body"]), stream=False, thinking=thinking)
    tools_server.say("It prints hello.")
    status, reply = raw_stream(tools_server.url, path, body, headers)
    assert status == 200 and reply["content"] == [{"type": "text", "text": "It prints hello."}]
