"""The Responses API end to end, with the real OpenAI SDK as the client: text whole and streamed,
function tools with their results fed back, reasoning items, json_schema, previous_response_id
(on the prompt cache), the store, errors as the SDK's exceptions, Codex CLI's request shape, and
responses sharing one batch with chat requests."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from mlxd.constrain.json_schema import validate

from helpers import ServerThread, SlowModel, get_json, sdk
from samples import CALL, PERSON
from scripted import Scripted, scripted_server

ASK = "Weather in Paris?"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
CODEX = Path(__file__).parent / "fixtures" / "codex_request.json"


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    # A long context: Codex's request shape holds long instructions and many tools.
    with scripted_server(
        tmp_path_factory, "tools", model={"max_position_embeddings": 16384}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def think_server(tmp_path_factory):
    with scripted_server(tmp_path_factory, "think") as server:
        yield server


def sse_events(url: str, body: dict) -> list[tuple[str, dict]]:
    """(event name, data) of a streamed response, read off the wire."""
    req = urllib.request.Request(
        url + "/v1/responses", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        text = resp.read().decode()
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


# ----- text -----


def test_text_whole(tools_server: Scripted):
    tools_server.say("Paris is the capital.")
    r = sdk(tools_server.url).responses.create(model="m", input="Capital?", max_output_tokens=50)
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == "Paris is the capital."
    [message] = r.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    use = r.usage
    assert use.input_tokens > 0 and use.output_tokens > 0
    assert use.total_tokens == use.input_tokens + use.output_tokens
    assert use.output_tokens_details.reasoning_tokens == 0
    assert use.input_tokens_details.cached_tokens == 0  # the scripted server has no prompt cache
    assert r.max_output_tokens == 50 and r.store and r.tools == []


def test_text_streamed_events(tools_server: Scripted):
    tools_server.say("Paris is the capital.")
    with sdk(tools_server.url).responses.stream(
        model="m", input="Capital?", max_output_tokens=50
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text == "Paris is the capital."
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id
    # Stored when done: the same response comes back.
    again = sdk(tools_server.url).responses.retrieve(final.id)
    assert again.output_text == final.output_text and again.status == "completed"


def test_each_event_is_named_on_the_wire(tools_server: Scripted):
    tools_server.say("Hi.")
    events = sse_events(tools_server.url, {"input": "x", "stream": True})
    assert all(name == data["type"] for name, data in events)
    assert events[-1][0] == "response.completed"


def test_running_out_of_tokens_is_incomplete(tools_server: Scripted):
    tools_server.say("A long answer that will not fit in four tokens at all.")
    client = sdk(tools_server.url)
    r = client.responses.create(model="m", input="x", max_output_tokens=4)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.usage.output_tokens == 4
    events = sse_events(tools_server.url, {"input": "x", "stream": True, "max_output_tokens": 4})
    assert events[-1][0] == "response.incomplete"


# ----- function tools -----


def test_function_call_round_trip(tools_server: Scripted):
    client = sdk(tools_server.url)
    tools_server.say(CALL)
    r = client.responses.create(model="m", input=ASK, tools=[WEATHER], max_output_tokens=200)
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather" and r.output_text == ""
    assert json.loads(call.arguments) == {"city": "Paris"} and call.call_id.startswith("call_")
    assert r.tools[0].name == "get_weather" and r.tool_choice == "auto"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    tools_server.say("It is sunny in Paris.")
    # The SDK's own output items go back into the input, with the call's result ...
    again = client.responses.create(
        model="m", input=[{"role": "user", "content": ASK}, *r.output, result], tools=[WEATHER]
    )
    assert again.output_text == "It is sunny in Paris."
    # ... or the stored response carries them.
    chained = client.responses.create(
        model="m", previous_response_id=r.id, input=[result], tools=[WEATHER]
    )
    assert chained.output_text == "It is sunny in Paris."
    assert chained.usage.input_tokens == again.usage.input_tokens


def test_streamed_function_calls(tools_server: Scripted):
    tools_server.say("Checking." + CALL + CALL.replace("Paris", "Oslo"))
    with sdk(tools_server.url).responses.stream(
        model="m", input=ASK, tools=[WEATHER], max_output_tokens=300
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]
    assert final.output_text == "Checking."
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [json.loads(e.arguments)["city"] for e in done] == ["Paris", "Oslo"]
    assert [e.output_index for e in done] == [1, 2]
    assert len({o.call_id for o in final.output[1:]}) == 2


def test_forced_call_is_enforced_and_parallel_false_stops(tools_server: Scripted):
    client = sdk(tools_server.url)
    tools_server.say("I would rather chat about the weather.")
    r = client.responses.create(
        model="m",
        input=ASK,
        tools=[{**WEATHER, "strict": True}],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=120,
    )
    [call] = r.output
    validate(json.loads(call.arguments), WEATHER["parameters"])
    tools_server.say(CALL + CALL.replace("Paris", "Oslo") + "and more")
    r = client.responses.create(
        model="m", input=ASK, tools=[WEATHER], parallel_tool_calls=False, max_output_tokens=300
    )
    assert [o.type for o in r.output] == ["function_call"] and not r.parallel_tool_calls


# ----- thinking models -----


def test_reasoning_items(think_server: Scripted):
    client = sdk(think_server.url)
    think_server.say("It is Paris.\n</think>\n\nParis.")
    r = client.responses.create(
        model="m", input="Capital?", reasoning={"effort": "medium", "summary": "auto"}
    )
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.summary == []
    assert reasoning.content[0].text == "It is Paris." and reasoning.encrypted_content is None
    assert r.output_text == "Paris." and r.usage.output_tokens_details.reasoning_tokens > 0
    with client.responses.stream(model="m", input="Capital?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    thought = [e.delta for e in events if e.type == "response.reasoning_text.delta"]
    assert "".join(thought) == "It is Paris." and final.output_text == "Paris."
    # A client without server state gets the thinking back encoded, and may send it back.
    r = client.responses.create(
        model="m", input="Capital?", store=False, include=["reasoning.encrypted_content"]
    )
    assert r.output[0].encrypted_content.startswith("mlxd1:")
    think_server.say("Yes.\n</think>\n\nIt is.")
    again = client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "Capital?"},
            *r.output,
            {"role": "user", "content": "Sure?"},
        ],
    )
    assert again.output_text == "It is."
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_effort_none_turns_thinking_off(think_server: Scripted):
    think_server.say("Paris.")
    r = sdk(think_server.url).responses.create(
        model="m", input="Capital?", reasoning={"effort": "none"}
    )
    assert [o.type for o in r.output] == ["message"] and r.output_text == "Paris."
    assert r.reasoning.effort == "none"


# ----- structured output, state, errors (the tiny random model) -----


def test_json_schema_strict_is_enforced(tiny_server):
    client = sdk(tiny_server.url)
    fmt = {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}
    for temperature in (0.0, 1.0):
        r = client.responses.create(
            model="m",
            input="A person, as JSON",
            text={"format": fmt},
            max_output_tokens=80,
            temperature=temperature,
        )
        validate(json.loads(r.output_text), PERSON)
        assert r.text.format.type == "json_schema"
    r = client.responses.create(
        model="m", input="JSON!", text={"format": {"type": "json_object"}}, max_output_tokens=60
    )
    assert isinstance(json.loads(r.output_text), dict)


def test_sdk_parse_with_a_pydantic_model(tiny_server):
    from pydantic import BaseModel

    class Person(BaseModel):
        name: str
        age: int

    r = sdk(tiny_server.url).responses.parse(
        model="m", input="A person", text_format=Person, max_output_tokens=80
    )
    assert isinstance(r.output_parsed, Person)


def test_previous_response_id_continues_on_the_prompt_cache(tiny_server):
    client = sdk(tiny_server.url)
    first = client.responses.create(
        model="m",
        input="Tell me a story.",
        instructions="Be brief.",
        max_output_tokens=8,
        temperature=0,
    )
    second = client.responses.create(
        model="m",
        previous_response_id=first.id,
        input="And then?",
        max_output_tokens=8,
        temperature=0,
    )
    assert second.previous_response_id == first.id and second.instructions is None
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0
    items = client.responses.input_items.list(second.id)
    texts = [item.content[0].text for item in items.data]
    assert texts == ["And then?", first.output_text, "Tell me a story."]
    assert items.first_id == items.data[0].id and items.last_id == items.data[-1].id
    assert not items.has_more
    page = client.responses.input_items.list(second.id, limit=1, order="asc")
    assert page.has_more and page.data[0].content[0].text == "Tell me a story."
    everything = list(client.responses.input_items.list(second.id, limit=1, order="asc"))
    assert [i.id for i in everything] == [i.id for i in reversed(items.data)]
    assert client.responses.retrieve(second.id).output_text == second.output_text
    # The continuation holds its whole context: deleting the first response does not break it.
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(first.id)
    assert "was deleted" in info.value.message
    third = client.responses.create(
        model="m", previous_response_id=second.id, input="The end.", max_output_tokens=4
    )
    assert third.usage.input_tokens > second.usage.input_tokens


def test_input_tokens(tiny_server):
    status, body = get_json(
        tiny_server.url + "/v1/responses/input_tokens", {"input": "Hello", "instructions": "Hi"}
    )
    r = sdk(tiny_server.url).responses.create(
        model="m", input="Hello", instructions="Hi", max_output_tokens=1, store=False
    )
    assert status == 200 and body == {
        "object": "response.input_tokens",
        "input_tokens": r.usage.input_tokens,
    }


def test_errors_are_the_sdk_exceptions(tiny_server):
    client = sdk(tiny_server.url)
    cases = [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"text": {"verbosity": "high"}}, "text.verbosity"),
        ({"extra_body": {"best_of": 2}}, "best_of"),
        ({"input": " ".join(["word"] * 3000)}, "input"),
        ({"tools": [WEATHER]}, "tools"),  # this template takes no tools
    ]
    for fields, param in cases:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                client.responses.create(**{"model": "m", "input": "x", **fields, "stream": stream})
            assert info.value.body["param"] == param, info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="m", input=" ".join(["word"] * 3000))
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve("resp_unknown")
    assert "never stored" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="m", input="x", previous_response_id="resp_unknown")
    assert info.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete("resp_unknown")
    with pytest.raises(openai.BadRequestError):
        client.responses.retrieve("resp_unknown", stream=True)
    store = client.responses.create(model="m", input="x", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(store.id)


def test_codex_request_shape(tools_server: Scripted):
    """Codex CLI's request (instructions, a developer message, many tools, reasoning, store
    false, streamed) must not 400, and its history reaches the template."""
    body = json.loads(CODEX.read_text())
    body.pop("_comment")
    tools_server.say(
        CALL.replace("get_weather", "shell").replace('"city": "Paris"', '"command": ["ls"]')
    )
    events = sse_events(tools_server.url, body)
    names = [name for name, _ in events]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    final = events[-1][1]["response"]
    [call] = final["output"]
    assert call["name"] == "shell" and json.loads(call["arguments"]) == {"command": ["ls"]}
    assert final["store"] is False and final["parallel_tool_calls"] is False
    status, _ = get_json(tools_server.url + f"/v1/responses/{final['id']}")
    assert status == 404  # store false
    count = {k: v for k, v in body.items() if k in ("input", "instructions", "tools")}
    status, tokens = get_json(tools_server.url + "/v1/responses/input_tokens", count)
    assert status == 200 and tokens["input_tokens"] == final["usage"]["input_tokens"] > 1000


# ----- one batch with chat -----


@pytest.fixture(scope="module")
def slow_server(tiny_model_dir):
    """Each forward pass takes >= 20 ms: requests sent together overlap in the batch."""
    from mlxd.service.config import Config

    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0, max_tokens=24, max_batch_size=8),
        model_wrapper=lambda m: SlowModel(m, 0.02),
    ).start()
    yield srv
    srv.close()


def test_responses_share_the_batch_with_chat(slow_server):
    client = sdk(slow_server.url)
    prompt = "Say something."
    results: dict = {}
    peak = [0]

    def chat(i):
        results[("chat", i)] = (
            client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=24,
                temperature=0,
            )
            .choices[0]
            .message.content
        )

    def respond(i):
        r = client.responses.create(model="m", input=prompt, max_output_tokens=24, temperature=0)
        results[("responses", i)] = r.output_text

    def watch():
        while len(results) < 6:
            peak[0] = max(peak[0], get_json(slow_server.url + "/stats")[1]["running_sequences"])
            time.sleep(0.01)

    workers = [threading.Thread(target=f, args=(i,)) for f in (chat, respond) for i in range(3)]
    watcher = threading.Thread(target=watch)
    for w in [*workers, watcher]:
        w.start()
    for w in [*workers, watcher]:
        w.join(120)
    # More sequences ran at once than either kind alone could make; greedy text is the same
    # whichever API asked for it and whatever shared the batch.
    assert peak[0] > 3
    assert len(set(results.values())) == 1, results


def test_a_failure_mid_stream_is_an_error_event_then_response_failed(tiny_model_dir):
    """--request-timeout ends a response that has started: the stream says so in OpenAI's
    events; a whole response gets the 504 as the SDK's exception."""
    from mlxd.service.config import Config

    srv = ServerThread(
        Config(model=str(tiny_model_dir), port=0, request_timeout=0.05),
        model_wrapper=lambda m: SlowModel(m, 0.2),  # the prefill alone outlasts the timeout
    ).start()
    try:
        events = sse_events(srv.url, {"input": "Hi", "stream": True, "max_output_tokens": 50})
        assert [name for name, _ in events][:1] + [name for name, _ in events][-2:] == [
            "response.created",
            "error",
            "response.failed",
        ]
        assert events[-2][1]["code"] == "request_timeout"
        failed = events[-1][1]["response"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "request_timeout"
        assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
        with pytest.raises(openai.APIStatusError) as info:
            sdk(srv.url).responses.create(model="m", input="Hi", max_output_tokens=50)
        assert info.value.status_code == 504
    finally:
        srv.close()
