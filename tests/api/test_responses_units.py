"""The Responses API without a server: request records, input items -> chat messages, output
items and their stream events, the response store."""

from __future__ import annotations

import json

import pytest

from mlxd.api.responses.items import decode_reasoning, encode_reasoning, to_messages
from mlxd.api.responses.output import Output
from mlxd.api.responses.request import InputTokensRequest, ResponsesRequest
from mlxd.api.responses.store import ResponseStore, Stored
from mlxd.transport.errors import HttpError

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def parse(**body) -> ResponsesRequest:
    return ResponsesRequest.from_json(json.dumps({"input": "hi", **body}).encode())


def refused(body: dict, param: str, parse_with=ResponsesRequest) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse_with.from_json(json.dumps(body).encode())
    assert info.value.status == 400 and info.value.param == param, info.value.message
    return info.value


# ----- request records -----


def test_defaults():
    req = parse()
    assert req.input[0]["role"] == "user" and req.input[0]["content"][0]["text"] == "hi"
    assert req.input[0]["id"].startswith("msg_")
    assert req.store and not req.stream and req.tool_choice.mode == "none"
    assert req.sampling.max_tokens is None and req.text_format is None


def test_fields_are_honoured():
    req = parse(
        instructions="Be brief.",
        max_output_tokens=9,
        temperature=0,
        top_p=0.5,
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
        reasoning={"effort": "low", "summary": "auto"},
        store=False,
        metadata={"a": "b"},
        include=["reasoning.encrypted_content"],
        user="u",
        prompt_cache_key="k",
        service_tier="auto",
        truncation="disabled",
    )
    assert req.sampling.max_tokens == 9 and req.sampling.temperature == 0
    assert req.tools[0]["function"]["name"] == "get_weather"
    assert (req.tool_choice.mode, req.tool_choice.name) == ("function", "get_weather")
    assert not req.parallel_tool_calls and not req.store and req.include_reasoning
    assert req.text_format.type == "json_schema" and req.reasoning.effort == "low"
    assert req.echoed == {"user": "u", "safety_identifier": None, "prompt_cache_key": "k"}


@pytest.mark.parametrize(
    "body,param",
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": 3}, "input"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{**WEATHER, "name": "bad name"}]}, "tools[0].name"),
        ({"input": "x", "tools": [{**WEATHER, "extra": 1}]}, "tools[0].extra"),
        ({"input": "x", "tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"input": "x", "tools": 5}, "tools"),
        ({"input": "x", "tools": {"type": "function"}}, "tools"),
        ({"input": "x", "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
        (
            {"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "n"}},
            "tool_choice",
        ),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"input": "x", "text": {"verbosity": "high"}}, "text.verbosity"),
        (
            {
                "input": "x",
                "text": {
                    "format": {
                        "type": "json_schema",
                        "name": "x",
                        "schema": {"type": "object", "pattern": "a"},
                    }
                },
            },
            "text.format.schema",
        ),
        ({"input": "x", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
        ({"input": "x", "reasoning": {"summary": "detailed"}}, "reasoning.summary"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include[0]"),
        ({"input": "x", "truncation": "auto"}, "truncation"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "service_tier": "flex"}, "service_tier"),
        ({"input": "x", "metadata": {"k": 1}}, "metadata"),
        ({"input": "x", "frequency_penalty": 0.5}, "frequency_penalty"),
        ({"input": [{"type": "input_image"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": ""}]}]},
            "input[0].content[0].url",
        ),
        (
            {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
            "input[0].call_id",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]},
            "input[0].output",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c",
                        "output": [
                            {"type": "input_image", "image_url": "data:image/png;base64,AA"}
                        ],
                    }
                ]
            },
            "input[0].output[0].type",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ],
)
def test_refusals_name_the_field(body, param):
    refused(body, param)


def test_input_tokens_takes_only_what_shapes_the_prompt():
    req = InputTokensRequest.from_json(json.dumps({"input": "hi", "tools": [WEATHER]}).encode())
    assert req.tools and isinstance(req, InputTokensRequest)
    refused({"input": "hi", "stream": True}, "stream", InputTokensRequest)


# ----- items -> chat messages -----


def test_items_become_chat_turns():
    req = parse(
        input=[
            {"role": "developer", "content": "Use tools."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather?"}],
            },
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "content": [{"type": "reasoning_text", "text": "Call it."}],
            },
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {
                "type": "function_call",
                "call_id": "c2",
                "name": "get_weather",
                "arguments": "not json",
            },
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
            {
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}],
            },
        ]
    )
    messages = to_messages("Be brief.", req.input)
    assert [m["role"] for m in messages] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    call_turn = messages[3]
    assert call_turn["reasoning_content"] == "Call it." and call_turn["content"] == ""
    assert [c["function"]["arguments"] for c in call_turn["tool_calls"]] == [
        {"city": "Paris"},
        "not json",
    ]
    assert messages[5] == {"role": "tool", "tool_call_id": "c2", "content": "rain"}
    assert messages[6] == {"role": "assistant", "content": "Sunny."}


def test_reasoning_text_round_trips_through_encrypted_content():
    blob = encode_reasoning("thinking, with ünïcode")
    assert decode_reasoning(blob) == "thinking, with ünïcode"
    assert decode_reasoning("gAAAAA-openai-encrypted") is None
    req = parse(
        input=[
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [{"type": "summary_text", "text": "S"}],
                "encrypted_content": blob,
            },
            {"role": "assistant", "content": "A"},
            {
                "type": "reasoning",
                "id": "rs_2",
                "summary": [{"type": "summary_text", "text": "Only a summary"}],
                "encrypted_content": "foreign",
            },
            {"role": "assistant", "content": "B"},
            {"type": "reasoning", "id": "rs_3", "summary": []},
            {"role": "user", "content": "C"},
        ]
    )
    turns = to_messages(None, req.input)
    assert turns[0]["reasoning_content"] == "thinking, with ünïcode"
    assert turns[1]["reasoning_content"] == "Only a summary"
    assert "reasoning_content" not in turns[2]


def test_image_parts_become_chat_image_parts_named_where_they_came_from():
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}
    req = parse(
        input=[{"role": "user", "content": [{"type": "input_text", "text": "What?"}, image]}]
    )
    stored = req.input[0]["content"][1]
    assert stored == {"type": "input_image", "image_url": image["image_url"], "detail": "low"}
    older = parse(input="Earlier.").input
    [previous, user] = to_messages(None, older + req.input, first_input=1)
    assert previous == {"role": "user", "content": "Earlier."}
    text, picture = user["content"]
    assert text == {"type": "text", "text": "What?"} and picture["type"] == "image"
    assert picture["ref"].where == "input[0].content[1]" and picture["ref"].detail == "low"


# ----- output items and their events -----


def test_output_items_and_events():
    out = Output(include_reasoning=True)
    events = out.feed([{"reasoning_content": "Hmm"}, {"reasoning_content": "."}, {"content": "Hi"}])
    events += out.feed(
        [
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ]
            }
        ]
    )
    events += out.finish(incomplete=False)
    assert [i["type"] for i in out.items] == ["reasoning", "message", "function_call"]
    reasoning, message, call = out.items
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Hmm."}]
    assert decode_reasoning(reasoning["encrypted_content"]) == "Hmm."
    assert message["content"][0]["text"] == "Hi" and message["status"] == "completed"
    assert call["call_id"] == "call_1" and call["arguments"] == "{}"
    assert [e["type"] for e in events] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ]
    # What was announced is what was there then: an empty item, an empty part.
    assert events[0]["item"]["content"] == [] and events[1]["part"]["text"] == ""
    assert events[13]["item"]["arguments"] == "" and events[13]["item"]["status"] == "in_progress"
    assert [e["output_index"] for e in events if "output_index" in e][-1] == 2


def test_cut_short_message_is_incomplete():
    out = Output()
    out.feed([{"content": "Once upon"}])
    done = out.finish(incomplete=True)
    assert out.items[0]["status"] == "incomplete" and done[-1]["item"]["status"] == "incomplete"


# ----- the store -----


def stored(rid: str, text: str = "x" * 100) -> Stored:
    return Stored.of({"id": rid, "output": [text]}, ({"id": "msg_" + rid, "text": text},))


def test_store_evicts_least_recently_used_and_says_so():
    size = stored("a").nbytes
    store = ResponseStore(size * 2)
    store.put(stored("a"))
    store.put(stored("b"))
    store.get("a")  # a is now the most recently used
    store.put(stored("c"))
    assert len(store) == 2 and store.nbytes == size * 2
    with pytest.raises(HttpError) as info:
        store.get("b", "previous_response_id")
    err = info.value
    assert err.status == 404 and err.param == "previous_response_id"
    assert "evicted" in err.message and "--responses-store-bytes" in err.message
    store.delete("a")
    with pytest.raises(HttpError) as info:
        store.get("a")
    assert "deleted" in info.value.message
    with pytest.raises(HttpError) as info:
        store.get("resp_never")
    assert "never stored" in info.value.message
    assert not store.put(stored("huge", "y" * size * 3)) and len(store) == 1


def test_an_empty_store_keeps_nothing():
    store = ResponseStore(0)
    assert not store.put(stored("a")) and len(store) == 0
