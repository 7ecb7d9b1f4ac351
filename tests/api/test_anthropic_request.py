"""Anthropic Messages bodies -> the chat path's records: the conversion, and every refusal
naming its field. No model."""

from __future__ import annotations

import json

import pytest

from mlxd.api.anthropic_messages.request import CountTokensRequest, MessagesRequest
from mlxd.transport.errors import HttpError

from samples import WEATHER

ASK = [{"role": "user", "content": "Weather in Paris?"}]
TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": WEATHER["function"]["parameters"],
}


def parse(count_only=False, **fields) -> MessagesRequest:
    body = {"messages": ASK, **({} if count_only else {"max_tokens": 50}), **fields}
    record = CountTokensRequest if count_only else MessagesRequest
    return record.from_json(json.dumps(body).encode())


def test_a_conversation_becomes_chat_messages():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "user", "content": "Weather in Paris?"},  # consecutive turns are one
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Look it up.", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "P"},
                },
                {"type": "redacted_thinking", "data": "opaque"},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "way"}],
                    "is_error": True,
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "text", "text": "Thanks", "cache_control": {"type": "ephemeral"}},
            ],
        },
    ]
    system = [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
    ]
    keep_all = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    req = parse(messages=history, system=system, tools=[TOOL], context_management=keep_all)
    assert list(req.chat.messages) == [
        {"role": "system", "content": "Be brief.\n\nBe kind."},
        {"role": "user", "content": "Hi\n\nWeather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "P"}},
                }
            ],
            "reasoning_content": "Look it up.",
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no\n\nway"},
        {"role": "user", "content": "Thanks"},
    ]
    assert (
        req.chat.tools == ({"type": "function", "function": {**WEATHER["function"]}},)
        and not req.prefill
    )


def test_image_blocks_become_chat_image_parts():
    png = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    url = {"type": "url", "url": "https://x/a.png"}
    history = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": png, "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "image", "source": url}],
                }
            ],
        },
    ]
    req = parse(messages=history, tools=[TOOL])
    first, tool = req.chat.messages[0]["content"], req.chat.messages[2]["content"]
    assert first[0] == {"type": "text", "text": "What is this?"} and first[1]["type"] == "image"
    assert first[1]["ref"].url == "data:image/png;base64,iVBORw0KGgo="
    assert first[1]["ref"].where == "messages[0].content[1]"
    assert tool[0]["ref"].url == "https://x/a.png"
    assert tool[0]["ref"].where == "messages[2].content[0].content[0]"


def test_sampling_and_tool_fields_map_onto_chat():
    req = parse(
        stop_sequences=["END", "STOP"],
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        metadata={"user_id": "u1"},
        tools=[TOOL],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        service_tier="standard_only",
        stream=True,
    )
    s = req.chat.sampling
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.stop) == (
        50,
        0.5,
        0.9,
        40,
        ("END", "STOP"),
    )
    assert req.stop_sequences == ("END", "STOP") and req.stream
    assert req.chat.tool_choice.mode == "required" and not req.chat.parallel_tool_calls
    named = parse(tools=[TOOL], tool_choice={"type": "tool", "name": "get_weather"})
    assert (named.chat.tool_choice.mode, named.chat.tool_choice.name) == ("function", "get_weather")
    assert parse(tools=[TOOL], tool_choice={"type": "none"}).chat.tool_choice.mode == "none"
    assert parse(tool_choice={"type": "auto"}).chat.tool_choice.mode == "none"  # no tools
    assert parse(tools=[TOOL]).chat.tool_choice.mode == "auto"


def test_thinking_maps_onto_the_reasoning_split():
    assert parse().chat.reasoning_format is None and parse().template_variables == {}
    on = parse(thinking={"type": "enabled", "budget_tokens": 2048})
    assert on.chat.reasoning_format == "deepseek" and on.thinking.shown
    assert parse(thinking={"type": "adaptive", "display": "omitted"}).thinking.shown is False
    off = parse(thinking={"type": "disabled"})
    assert off.template_variables == {"enable_thinking": False}


def test_a_final_assistant_message_is_a_prefill():
    history = ASK + [{"role": "assistant", "content": "The answer is"}]
    req = parse(messages=history)
    assert req.prefill and req.chat.messages[-1] == {
        "role": "assistant",
        "content": "The answer is",
    }
    assert req.template_variables == {
        "add_generation_prompt": False,
        "continue_final_message": True,
    }
    empty = parse(messages=ASK + [{"role": "assistant", "content": ""}])
    assert not empty.prefill and list(empty.chat.messages) == ASK


def turns_with_thinking():
    think = {"type": "thinking", "thinking": "hm", "signature": ""}
    call = {"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t", "content": "ok"}
    return [
        ASK[0],
        {"role": "assistant", "content": [think, {"type": "text", "text": "A"}]},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": [think, call]},
        {"role": "user", "content": [result]},  # a tool result: the same turn goes on
        {"role": "assistant", "content": [think, {"type": "text", "text": "B"}]},
        {"role": "user", "content": "more"},
    ]


@pytest.mark.parametrize(
    "edit,kept",
    [
        (None, 2),  # the latest assistant turn: both messages of its tool loop
        ({"type": "clear_thinking_20251015", "keep": "all"}, 3),
        ({"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 2}}, 3),
        ({"type": "clear_thinking_20251015"}, 2),
    ],
)
def test_clear_thinking_keeps_the_latest_turns(edit, kept):
    fields = {"context_management": {"edits": [edit]}} if edit else {}
    req = parse(messages=turns_with_thinking(), tools=[TOOL], **fields)
    assert sum("reasoning_content" in m for m in req.chat.messages) == kept


def test_output_config_format_is_a_json_schema_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    req = parse(
        output_config={"effort": "high", "format": {"type": "json_schema", "schema": schema}}
    )
    assert req.chat.response_format.type == "json_schema" and req.chat.response_format.grammar
    assert parse(output_config={"effort": "low"}).chat.response_format is None


def test_count_tokens_bodies_take_no_sampling_fields():
    req = parse(count_only=True, system="Be brief.", tools=[TOOL])
    assert req.chat.sampling.max_tokens is None and len(req.chat.messages) == 2
    with pytest.raises(HttpError) as info:
        parse(count_only=True, max_tokens=5)
    assert info.value.param == "max_tokens"


BLOCK = "messages[0].content[0]"


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"foo": 1}, "foo"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"stream": "yes"}, "stream"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stop_sequences": ["x"] * 17}, "stop_sequences"),
        ({"metadata": {"user_id": "u", "email": "e"}}, "metadata.email"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"system": [{"type": "image"}]}, "system[0].type"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x", "name": "a"}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, f"{BLOCK}.type"),
        ({"messages": [{"role": "user", "content": [{"type": "image"}]}]}, f"{BLOCK}.source"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "z": 1}]}]},
            f"{BLOCK}.z",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "x", "cache_control": {"type": "forever"}}
                        ],
                    }
                ]
            },
            f"{BLOCK}.cache_control",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t",
                                "content": [{"type": "search_result"}],
                            }
                        ],
                    }
                ]
            },
            f"{BLOCK}.content[0].type",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t"}]}]},
            f"{BLOCK}.name",
        ),
        ({"messages": ASK + [{"role": "assistant", "content": "x "}]}, "messages[1].content"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tools": [{**TOOL, "name": "a b"}]}, "tools[0].name"),
        ({"tools": [{**TOOL, "defer_loading": True}]}, "tools[0].defer_loading"),
        ({"tools": [TOOL, TOOL]}, "tools[1].name"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
        ({"tools": [TOOL], "tool_choice": {"type": "none", "name": "x"}}, "tool_choice.name"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "between_tools"}}, "thinking.type"),
        ({"thinking": {"type": "adaptive", "display": "full"}}, "thinking.display"),
        ({"output_config": {"effort": "extreme"}}, "output_config.effort"),
        ({"output_config": {"format": {"type": "text"}}}, "output_config.format"),
        (
            {"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}},
            "context_management.edits[0].type",
        ),
        (
            {"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": 3}]}},
            "context_management.edits[0].keep",
        ),
        ({"cache_control": {"type": "persistent"}}, "cache_control"),
        ({"container": "c"}, "container"),
    ],
)
def test_refusals_name_the_field(fields, param):
    with pytest.raises(HttpError) as info:
        parse(**fields)
    assert info.value.status == 400 and info.value.param == param, info.value.message
