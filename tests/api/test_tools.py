"""Tool calling: template support, the tool-call formats mlx-lm parses, the streaming splitter
(whole, one character at a time, with trailing text), request validation, and the round trip
through the OpenAI SDK on a tiny model with a Qwen 2.5 style template."""

from __future__ import annotations

import json

import pytest

from mlxd.api.markers import NORMAL, TOOL, MarkerMachine, Run, Switch
from mlxd.api.reply import ReplySpec
from mlxd.api.schema import ChatRequest
from mlxd.api.toolcalls import template_takes_tools, tool_format
from mlxd.transport.errors import HttpError

from helpers import get_json, sdk
from samples import CALL, TIME, WEATHER, fmt
from scripted import Scripted, scripted_server
from tinymodel import CHATML_TEMPLATE, QWEN_TOOLS_TEMPLATE

ASK = [{"role": "user", "content": "Weather in Paris?"}]


# ----- the formats: (parser, reply text, expected calls, expected content) -----

CASES = [
    (
        "json_tools",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        [("get_weather", {"city": "Paris"})],
        None,
    ),
    (
        "json_tools",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
        '"Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
        '{"zone": "CET"}}\n</tool_call>',
        [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})],
        "Let me check.",
    ),
    (
        "qwen3_coder",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "</function>\n</tool_call>",
        [("get_weather", {"city": "Paris"})],
        None,
    ),
    (
        "pythonic",
        '<|tool_call_start|>[get_weather(city="Paris")]<|tool_call_end|>',
        [("get_weather", {"city": "Paris"})],
        None,
    ),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        [("get_weather", {"city": "Paris"})],
        None,
    ),
    (
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        [("get_weather", {"city": "Paris"})],
        None,
    ),
    (
        "function_gemma",
        "<start_function_call>call:get_weather{city:<escape>Paris<escape>}<end_function_call>",
        [("get_weather", {"city": "Paris"})],
        None,
    ),
    (
        "glm47",
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>",
        [("get_weather", {"city": "Paris"})],
        None,
    ),
    (
        "kimi_k2",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|>'
        "<|tool_calls_section_end|>",
        [("get_weather", {"city": "Paris"})],
        None,
    ),
]


def run_reply(spec: ReplySpec, pieces: list[str]):
    reply = spec.new()
    deltas = [d for p in pieces for d in reply.feed(p)]
    tail, reason = reply.finish("stop")
    return reply, deltas + tail, reason


@pytest.mark.parametrize("name,text,calls,content", CASES)
@pytest.mark.parametrize("split", ["whole", "chars", "trailing"])
def test_formats_parse_whole_and_streamed(name, text, calls, content, split):
    spec = ReplySpec(tools=fmt(name), tool_defs=[WEATHER, TIME])
    pieces = {"whole": [text], "chars": list(text), "trailing": [text, "\n"]}[split]
    reply, deltas, reason = run_reply(spec, pieces)
    message = reply.message_fields()
    got = [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in message["tool_calls"]
    ]
    assert got == calls and reason == "tool_calls"
    assert message["content"] == content
    streamed = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [c["index"] for c in streamed] == list(range(len(calls)))
    assert all(c["id"] and c["type"] == "function" for c in streamed)
    assert "".join(d.get("content", "") for d in deltas) == (content or "")


def test_call_ids_are_unique_and_kimi_keeps_its_own():
    reply, _, _ = run_reply(ReplySpec(tools=fmt("json_tools")), [CASES[1][1]])
    ids = [c["id"] for c in reply.message_fields()["tool_calls"]]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    reply, _, _ = run_reply(ReplySpec(tools=fmt("kimi_k2")), [CASES[-1][1]])
    assert reply.message_fields()["tool_calls"][0]["id"] == "functions.get_weather:0"


def test_a_block_that_does_not_parse_stays_content():
    text = "Hi <tool_call>\nnot json at all\n</tool_call> bye"
    reply, deltas, reason = run_reply(ReplySpec(tools=fmt("json_tools")), list(text))
    assert reason == "stop" and "tool_calls" not in reply.message_fields()
    assert reply.message_fields()["content"] == text


def test_a_block_cut_short_stays_content_with_its_reason():
    reply = ReplySpec(tools=fmt("json_tools")).new()
    reply.feed('<tool_call>\n{"name": "get_weather", "argu')
    tail, reason = reply.finish("length")
    assert reason == "length"
    assert reply.message_fields()["content"] == '<tool_call>\n{"name": "get_weather", "argu'
    assert tail == [{"content": '<tool_call>\n{"name": "get_weather", "argu'}]


def test_a_stop_string_cut_closes_the_block():
    # parallel_tool_calls false adds the end marker as a stop string: the text ends mid-block.
    reply = ReplySpec(tools=fmt("json_tools"), max_calls=1).new()
    reply.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n')
    _, reason = reply.finish("stop")
    assert reason == "tool_calls" and len(reply.message_fields()["tool_calls"]) == 1


def test_an_end_marker_inside_a_json_string_does_not_end_the_block():
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "a</tool_call>b"}}\n'
        "</tool_call>"
    )
    for pieces in ([text], list(text)):
        reply, deltas, reason = run_reply(ReplySpec(tools=fmt("json_tools")), pieces)
        [call] = reply.message_fields()["tool_calls"]
        assert json.loads(call["function"]["arguments"]) == {"city": "a</tool_call>b"}
        assert reason == "tool_calls" and not any("content" in d for d in deltas)


def test_max_calls_keeps_the_first():
    reply, _, _ = run_reply(ReplySpec(tools=fmt("json_tools"), max_calls=1), [CASES[1][1]])
    assert [c["function"]["name"] for c in reply.message_fields()["tool_calls"]] == ["get_weather"]


def test_plain_text_is_untouched_by_a_tool_format():
    text = "No tools needed:  just <b>text</b> and a < sign.\n"
    reply, deltas, reason = run_reply(ReplySpec(tools=fmt("json_tools")), list(text))
    assert reason == "stop" and reply.message_fields()["content"] == text
    assert "".join(d["content"] for d in deltas) == text


def test_marker_machine_holds_partial_markers():
    m = MarkerMachine({NORMAL: (("<tool_call>", TOOL),), TOOL: (("</tool_call>", NORMAL),)})
    assert list(m.feed("ab<tool")) == [Run(NORMAL, "ab")]
    assert list(m.feed("_call>x</tool_c")) == [Switch(NORMAL, TOOL, "<tool_call>"), Run(TOOL, "x")]
    assert list(m.feed("all><to")) == [Switch(TOOL, NORMAL, "</tool_call>")]
    assert m.finish() == [Run(NORMAL, "<to")]


def test_marker_machine_reject_reads_on_in_the_old_state():
    m = MarkerMachine({NORMAL: (("<a>", TOOL),), TOOL: (("</a>", NORMAL),)})
    events = []
    for ev in m.feed("<a>x</a>y</a>z"):
        events.append(ev)
        if ev == Switch(TOOL, NORMAL, "</a>") and len(events) == 3:
            m.reject()
    assert events == [
        Switch(NORMAL, TOOL, "<a>"),
        Run(TOOL, "x"),
        Switch(TOOL, NORMAL, "</a>"),
        Run(TOOL, "y"),
        Switch(TOOL, NORMAL, "</a>"),
        Run(NORMAL, "z"),
    ]


# ----- template support -----


class FakeTokenizer:
    def __init__(self, template) -> None:
        self.chat_template = template
        self.init_kwargs = {}

    def get_vocab(self):
        return {}


def test_template_support_is_read_from_the_template():
    assert not template_takes_tools(FakeTokenizer(CHATML_TEMPLATE))
    assert template_takes_tools(FakeTokenizer(QWEN_TOOLS_TEMPLATE))
    assert template_takes_tools(FakeTokenizer({"default": "x", "tool_use": "{{ tools }}"}))
    assert tool_format(FakeTokenizer(QWEN_TOOLS_TEMPLATE)).name == "json_tools"
    assert tool_format(FakeTokenizer(CHATML_TEMPLATE)) is None


# ----- request validation -----


def chat(**fields):
    return ChatRequest.from_json(json.dumps({"messages": ASK, **fields}).encode())


def test_tool_fields_parse():
    req = chat(
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
    )
    assert [t["function"]["name"] for t in req.tools] == ["get_weather", "get_time"]
    assert (req.tool_choice.mode, req.tool_choice.name) == ("function", "get_time")
    assert not req.parallel_tool_calls
    assert chat(tools=[WEATHER]).tool_choice.mode == "auto"
    assert chat().tool_choice.mode == "none" and chat(tool_choice="none").tools == ()


def test_history_with_calls_and_results():
    history = ASK + [
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
    ]
    req = ChatRequest.from_json(json.dumps({"messages": history, "tools": [WEATHER]}).encode())
    assistant, tool = req.messages[1], req.messages[2]
    assert assistant["content"] == ""
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


@pytest.mark.parametrize(
    "fields,param",
    [
        ({"tools": {"a": 1}}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "x": 1}}]},
            "tools[0].function.x",
        ),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"tools": [WEATHER], "parallel_tool_calls": "no"}, "parallel_tool_calls"),
        (
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]},
            "messages[0].tool_call_id",
        ),
        (
            {"messages": [{"role": "assistant", "content": "x", "refusal": "no"}]},
            "messages[0].refusal",
        ),
        (
            {
                "messages": [
                    {"role": "assistant", "content": "x", "tool_calls": [{"type": "function"}]}
                ]
            },
            "messages[0].tool_calls[0].function",
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_call_id": "a"}]},
            "messages[0].tool_call_id",
        ),
    ],
)
def test_tool_refusals(fields, param):
    with pytest.raises(HttpError) as info:
        ChatRequest.from_json(json.dumps({"messages": ASK, **fields}).encode())
    assert info.value.status == 400 and info.value.param == param, info.value.message


# ----- end to end: a template without tools -----


def test_a_template_without_tools_says_so(tiny_server):
    status, body = get_json(
        tiny_server.url + "/v1/chat/completions",
        {"messages": ASK, "tools": [WEATHER], "max_tokens": 2},
    )
    assert status == 400 and body["error"]["param"] == "tools"
    assert "no tool support" in body["error"]["message"]
    history = ASK + [{"role": "tool", "tool_call_id": "c", "content": "x"}]
    status, body = get_json(
        tiny_server.url + "/v1/chat/completions", {"messages": history, "max_tokens": 2}
    )
    assert status == 400 and body["error"]["param"] == "messages"
    # tool_choice "none" sends nothing to the template: allowed.
    status, _ = get_json(
        tiny_server.url + "/v1/chat/completions",
        {"messages": ASK, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 2},
    )
    assert status == 200


# ----- end to end: a scripted model that calls tools, through the OpenAI SDK -----


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    with scripted_server(tmp_path_factory, "tools") as server:
        yield server


@pytest.fixture()
def client(tools_server):
    return sdk(tools_server.url)


def test_sdk_tool_call_round_trip(tools_server: Scripted, client):
    tools_server.say(CALL)
    resp = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], max_tokens=200)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and call.type == "function"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # The SDK's own message object goes back into the history, with the tool's result.
    tools_server.say("It is sunny in Paris.")
    again = client.chat.completions.create(
        model="m",
        tools=[WEATHER],
        max_tokens=60,
        messages=ASK
        + [choice.message, {"role": "tool", "tool_call_id": call.id, "content": "sunny"}],
    )
    assert again.choices[0].message.content == "It is sunny in Paris."
    assert again.choices[0].finish_reason == "stop" and not again.choices[0].message.tool_calls
    assert again.usage.prompt_tokens > resp.usage.prompt_tokens


def test_sdk_streamed_tool_calls_assemble(tools_server: Scripted, client):
    tools_server.say("Checking." + CALL + CALL.replace("Paris", "Oslo"))
    with client.chat.completions.stream(
        model="m", messages=ASK, tools=[WEATHER], max_tokens=300
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
    args = [json.loads(c.function.arguments)["city"] for c in choice.message.tool_calls]
    assert args == ["Paris", "Oslo"]
    assert len({c.id for c in choice.message.tool_calls}) == 2


def test_parallel_tool_calls_false_stops_after_the_first(tools_server: Scripted, client):
    tools_server.say(CALL + CALL.replace("Paris", "Oslo") + "and more text to stop early")
    resp = client.chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER], parallel_tool_calls=False, max_tokens=300
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    assert resp.usage.completion_tokens < len(tools_server.script)


def test_tool_choice_none_leaves_the_text_alone(tools_server: Scripted, client):
    tools_server.say(CALL)
    resp = client.chat.completions.create(
        model="m", messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=200
    )
    assert resp.choices[0].message.content == CALL and resp.choices[0].finish_reason == "stop"


def test_strict_tools_are_enforced_under_auto(tools_server: Scripted, client):
    from mlxd.constrain.json_schema import validate

    wrong = CALL.replace('"city"', '"town"')
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    tools_server.say("Let me look." + wrong)
    resp = client.chat.completions.create(model="m", messages=ASK, tools=[strict], max_tokens=120)
    message = resp.choices[0].message
    assert message.content == "Let me look."  # text before the call stays free
    [call] = message.tool_calls
    validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # Without strict, the arguments are the model's own.
    tools_server.say(wrong)
    resp = client.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], max_tokens=120)
    assert json.loads(resp.choices[0].message.tool_calls[0].function.arguments) == {"town": "Paris"}
