"""Structured output and forced tool calls, enforced while decoding: a tiny random-weight model
writes arbitrary tokens, and every constrained choice must still parse and validate, alone and
in batches mixed with free requests; the real SmolLM2 answers an extraction request."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from mlxd.api.schema import ChatRequest, CompletionRequest
from mlxd.constrain.json_schema import validate
from mlxd.transport.errors import HttpError

from helpers import ServerThread, get_json, sdk
from samples import TIME, WEATHER
from tinymodel import build_tiny_model

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "role": {"enum": ["admin", "user", None]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "address": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/address"}]},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "number"]}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        }
    },
}
SCORES = {
    "type": "object",
    "properties": {
        "scores": {"type": "array", "items": {"type": "number"}, "minItems": 2},
        "ok": {"type": "boolean"},
    },
    "required": ["scores", "ok"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe someone."}]


def json_schema(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# ----- request validation -----


def parse(**fields):
    return ChatRequest.from_json(json.dumps({"messages": ASK, **fields}).encode())


def test_response_formats_parse():
    assert parse(response_format={"type": "text"}).response_format is None
    rf = parse(response_format={"type": "json_object"}).response_format
    assert rf.type == "json_object" and rf.grammar is not None
    rf = parse(response_format=json_schema(PERSON)).response_format
    assert (rf.type, rf.name, rf.schema) == ("json_schema", "answer", PERSON)
    body = {"prompt": "x", "response_format": json_schema(SCORES)}
    assert CompletionRequest.from_json(json.dumps(body).encode()).response_format.grammar


@pytest.mark.parametrize(
    "response_format,param,word",
    [
        ({"type": "xml"}, "response_format", None),
        ({"type": "json_object", "schema": {}}, "response_format.schema", None),
        ({"type": "json_schema"}, "response_format.json_schema", None),
        (
            {"type": "json_schema", "json_schema": {"schema": {}}},
            "response_format.json_schema.name",
            None,
        ),
        (
            {"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "extra": 1}},
            "response_format.json_schema.extra",
            None,
        ),
        (
            json_schema({"type": "string", "pattern": "^a+$"}),
            "response_format.json_schema.schema",
            "pattern",
        ),
        (
            json_schema(
                {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}}
            ),
            "response_format.json_schema.schema",
            "format",
        ),
        (
            json_schema({"allOf": [{"type": "string"}]}),
            "response_format.json_schema.schema",
            "allOf",
        ),
        (
            json_schema({"type": "number", "minimum": 3}),
            "response_format.json_schema.schema",
            "minimum",
        ),
    ],
)
def test_unsupported_schemas_are_refused_by_name(response_format, param, word):
    with pytest.raises(HttpError) as info:
        parse(response_format=response_format)
    assert info.value.status == 400 and info.value.param == param, info.value.message
    if word:
        assert f"'{word}'" in info.value.message


# ----- end to end on random weights -----


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = build_tiny_model(tmp_path_factory.mktemp("structured") / "tiny-tools", template="tools")
    from mlxd.service.config import Config

    srv = ServerThread(Config(model=str(model), port=0, max_tokens=64, max_batch_size=8)).start()
    yield srv
    srv.close()


def chat(server, body: dict):
    status, reply = get_json(server.url + "/v1/chat/completions", body, timeout=120)
    assert status == 200, reply
    return reply


def check(text: str, schema: dict | None) -> None:
    value = json.loads(text)
    if schema is None:
        assert isinstance(value, dict)
    else:
        validate(value, schema)


def test_mixed_batch_every_constrained_choice_validates(server):
    # Free and constrained requests decode together; n > 1 choices get their own constraints.
    requests = []
    for i in range(12):
        schema = [PERSON, SCORES, None, "free"][i % 4]
        # PERSON's shortest answer is 56 bytes: the tiny tokenizer needs about as many tokens.
        body = {
            "messages": [{"role": "user", "content": f"Request {i}"}],
            "max_tokens": 80,
            "temperature": 1.0,
            "seed": i,
            "n": 1 + i % 3,
        }
        if schema == "free":
            requests.append((body, "free"))
            continue
        body["response_format"] = json_schema(schema) if schema else {"type": "json_object"}
        requests.append((body, schema))
    with ThreadPoolExecutor(len(requests)) as pool:
        replies = list(pool.map(lambda r: chat(server, r[0]), requests))
    for (body, schema), reply in zip(requests, replies, strict=True):
        assert len(reply["choices"]) == body["n"]
        for choice in reply["choices"]:
            if schema != "free":
                check(choice["message"]["content"], schema)


def test_streamed_structured_output_through_the_sdk(server):
    client = sdk(server.url)
    stream = client.chat.completions.create(
        model="m",
        messages=ASK,
        response_format=json_schema(PERSON),
        max_tokens=80,
        n=2,
        temperature=1.0,
        seed=5,
        stream=True,
    )
    texts = ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    for text in texts:
        check(text, PERSON)


def test_tight_max_tokens_still_parses(server):
    # SCORES' shortest answer is 26 bytes; the rest of the budget is squeezed to fit.
    reply = chat(
        server,
        {
            "messages": ASK,
            "response_format": json_schema(SCORES),
            "max_tokens": 30,
            "temperature": 1.0,
            "seed": 3,
            "n": 4,
        },
    )
    for choice in reply["choices"]:
        check(choice["message"]["content"], SCORES)


def test_completions_take_a_response_format(server):
    status, reply = get_json(
        server.url + "/v1/completions",
        {
            "prompt": "JSON:",
            "response_format": json_schema(SCORES),
            "max_tokens": 40,
            "temperature": 1.0,
            "seed": 1,
        },
    )
    assert status == 200
    check(reply["choices"][0]["text"], SCORES)


def test_required_and_named_tool_calls_are_enforced(server):
    client = sdk(server.url)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for choice_field in ("required", {"type": "function", "function": {"name": "get_time"}}):
        resp = client.chat.completions.create(
            model="m",
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice=choice_field,
            max_tokens=64,
            temperature=1.0,
            seed=2,
            n=3,
        )
        for choice in resp.choices:
            assert choice.finish_reason == "tool_calls", choice
            [call] = choice.message.tool_calls
            if choice_field != "required":
                assert call.function.name == "get_time"
            validate(json.loads(call.function.arguments), schemas[call.function.name])
        with client.chat.completions.stream(
            model="m",
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice=choice_field,
            max_tokens=64,
            temperature=1.0,
            seed=4,
        ) as stream:
            final = stream.get_final_completion()
        [call] = final.choices[0].message.tool_calls
        validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_what_cannot_be_combined_or_enforced(server, tiny_server):
    status, body = get_json(
        server.url + "/v1/chat/completions",
        {"messages": ASK, "tools": [WEATHER], "response_format": {"type": "json_object"}},
    )
    assert status == 400 and body["error"]["param"] == "response_format"
    strict_bad = {
        "type": "function",
        "function": {"name": "f", "strict": True, "parameters": {"type": "string", "pattern": "a"}},
    }
    status, body = get_json(
        server.url + "/v1/chat/completions", {"messages": ASK, "tools": [strict_bad]}
    )
    assert status == 400 and body["error"]["param"] == "tools[0].function.parameters"
    assert "'pattern'" in body["error"]["message"]
    # A non-strict tool outside the subset is still callable: its arguments are any object.
    loose = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string", "minLength": 2}},
            },
        },
    }
    reply = chat(
        server,
        {
            "messages": ASK,
            "tools": [loose],
            "tool_choice": "required",
            "max_tokens": 40,
            "temperature": 1.0,
            "seed": 9,
        },
    )
    [call] = reply["choices"][0]["message"]["tool_calls"]
    assert isinstance(json.loads(call["function"]["arguments"]), dict)
    # A chat template without tools: the request says what cannot be done.
    status, body = get_json(
        tiny_server.url + "/v1/chat/completions",
        {"messages": ASK, "tools": [WEATHER], "tool_choice": "required"},
    )
    assert status == 400 and body["error"]["param"] == "tools"


# ----- the real model -----


@pytest.mark.smollm
def test_smollm_extracts_valid_json(smollm_path):
    from mlxd.service.config import Config

    srv = ServerThread(Config(model=str(smollm_path), port=0)).start(timeout=120)
    try:
        client = sdk(srv.url)
        schema = {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        }
        reply = client.chat.completions.create(
            model="m",
            max_tokens=40,
            temperature=0,
            response_format=json_schema(schema, "person"),
            messages=[
                {
                    "role": "user",
                    "content": "Extract the person's name and age as JSON "
                    "from this sentence: Alice Martin is 34 years old.",
                }
            ],
        )
        value = json.loads(reply.choices[0].message.content)
        validate(value, schema)
        assert "Alice" in value["name"] and value["age"] == 34
    finally:
        srv.close()


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    from scripted import scripted_server

    with scripted_server(tmp_path_factory, "tools") as server:
        yield server


def test_sdk_parse_with_pydantic_models(scripted):
    # The SDK's strict schemas (titles, $defs, $ref, anyOf with null) are in the subset, and an
    # answer that fits goes through the constraint untouched.
    from typing import Literal

    from pydantic import BaseModel

    class Address(BaseModel):
        city: str
        zip: str | None

    class Person(BaseModel):
        name: str
        age: int
        kind: Literal["a", "b"]
        homes: list[Address]

    client = sdk(scripted.url)
    person = Person(name="Ann", age=7, kind="b", homes=[Address(city="Oslo", zip=None)])
    scripted.say(person.model_dump_json())
    reply = client.chat.completions.parse(
        model="m", messages=ASK, response_format=Person, max_tokens=150
    )
    assert reply.choices[0].message.parsed == person
    tool = openai.pydantic_function_tool(Address, name="save_address")
    scripted.say(
        '<tool_call>\n{"name": "save_address", "arguments": {"city": "Rome", '
        '"zip": "00100"}}\n</tool_call>'
    )
    reply = client.chat.completions.parse(
        model="m", messages=ASK, tools=[tool], tool_choice="required", max_tokens=150
    )
    [call] = reply.choices[0].message.tool_calls
    assert call.function.parsed_arguments == Address(city="Rome", zip="00100")
