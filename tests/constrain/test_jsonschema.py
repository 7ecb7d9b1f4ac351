"""The JSON Schema subset: what compiles, what is refused (by name), the byte automaton on
hand-written JSON, and random texts from each grammar checked by json.loads and the validator."""

from __future__ import annotations

import json
import random

import pytest

from mlxd.constrain.grammar import INF, STATE_MASK, Grammar
from mlxd.constrain.json_schema import SchemaError, ValidationError, compile_schema, validate

from samples import PERSON, RICH, TREE

SCHEMAS = {
    "json_object": None,
    "person": PERSON,
    "tree": TREE,
    "rich": RICH,
    "array": {"type": "array", "items": {"type": "string"}, "minItems": 2},
    "anything": {},
    "free_object": {"type": "object"},
    "typed_map": {"type": "object", "additionalProperties": {"type": "integer"}},
    "root_scalar": {"type": ["integer", "boolean"]},
    "definitions": {"definitions": {"a": {"type": "string"}}, "$ref": "#/definitions/a"},
}


def accepts(grammar: Grammar, data: bytes) -> bool:
    return grammar.accepting(grammar.walk(data))


def _schema(name: str) -> dict:
    """What a text from SCHEMAS[name] must validate against (None is json_object mode)."""
    return {"type": "object"} if SCHEMAS[name] is None else SCHEMAS[name]


# ----- acceptance and refusal -----


@pytest.mark.parametrize("name", SCHEMAS)
def test_supported_schemas_compile(name):
    grammar = compile_schema(SCHEMAS[name])
    assert isinstance(grammar, Grammar)
    assert 0 < grammar.state_cost(grammar.initial) < INF  # some text completes it; "" does not
    assert compile_schema(SCHEMAS[name]) is grammar  # cached


REFUSED = [
    "pattern",
    "format",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "allOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "unevaluatedProperties",
    "prefixItems",
    "contains",
    "uniqueItems",
    "nullable",
    "$anchor",
    "$id",
    "x-custom",
]


@pytest.mark.parametrize("keyword", REFUSED)
def test_unsupported_keyword_is_named(keyword):
    schema = {"type": "object", "properties": {"a": {"type": "string", keyword: 1}}}
    with pytest.raises(SchemaError) as err:
        compile_schema(schema)
    assert f"'{keyword}'" in str(err.value) and "#/properties/a" in str(err.value)


@pytest.mark.parametrize(
    "schema, words",
    [
        ({"type": "strin"}, "unknown type 'strin'"),
        ({"type": []}, "type"),
        ({"type": "object", "properties": {"a": {}}, "required": ["b"]}, "'b' is not in"),
        ({"type": "object", "required": "a"}, "required"),
        ({"$ref": "#/$defs/missing"}, "does not resolve"),
        ({"$ref": "http://example.com/s.json"}, "only local '$ref'"),
        ({"$ref": "#/$defs/a", "type": "string", "$defs": {"a": {}}}, "'$ref' cannot be combined"),
        ({"anyOf": []}, "non-empty"),
        ({"anyOf": [{"type": "string"}], "type": "string"}, "cannot be combined with 'type'"),
        ({"enum": []}, "non-empty"),
        ({"type": "string", "enum": [1, 2]}, "no enum/const value"),
        ({"enum": [float("nan")]}, "not JSON"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "minItems is greater"),
        ({"type": "array", "maxItems": -1}, "non-negative"),
        ({"type": "array", "items": [{"type": "string"}]}, "tuple form"),
        ({"type": "object", "additionalProperties": 3}, "additionalProperties"),
        ({"type": "object", "properties": {"a": False}}, "allows no value"),
        ({"type": "object", "properties": {"a": 3}}, "must be an object"),
        (
            {
                "$defs": {
                    "n": {
                        "type": "object",
                        "required": ["n"],
                        "additionalProperties": False,
                        "properties": {"n": {"$ref": "#/$defs/n"}},
                    }
                },
                "$ref": "#/$defs/n",
            },
            "no finite JSON",
        ),
        (
            {
                "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}},
                "$ref": "#/$defs/a",
            },
            "refers to itself",
        ),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "refers to itself"),
    ],
)
def test_bad_schemas_are_refused(schema, words):
    with pytest.raises(SchemaError) as err:
        compile_schema(schema)
    assert words in str(err.value)


def test_absurd_nesting_is_refused():
    schema: dict = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaError, match="nested too deeply"):
        compile_schema(schema)


def test_non_object_schema_is_refused():
    with pytest.raises(SchemaError):
        compile_schema(["type", "string"])


# ----- the byte automaton -----

VALID = {
    "json_object": [
        "{}",
        '{"a":1}',
        '{"a": 1, "b": [true, false, null]}',
        '{"":""}',
        '{"k":"\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\u20AC"}',
        '{"k":"caf\u00e9 \U0001f642"}',
        '{"n":[-0, 0.5, 1e5, -1.25E-3, 123456789012345]}',
        '{"o":{"p":{"q":[]}}}',
        '{"a":1,"a":2}',
    ],
    "person": ['{"name":"John","age":31}', '{"name": "J\u00f8rn", "age": -2}'],
    "tree": [
        '{"value":1,"children":[]}',
        '{"value":1, "children":[{"value":2,"children":[{"value":3,"children":[]}]}]}',
    ],
    "array": ['["a","b"]', '["a", "b", "c"]'],
    "root_scalar": ["12", "true", "-3"],
    "rich": [
        '{"s":"x","n":1.5,"i":2,"b":true,"z":null,"e":{"k":[1]},"c":"fixed","a":[1],'
        '"u":{"x":1,"y":2},"o":{},"nullable":null,"opt":false}',
        '{"s":"","n":0,"i":0,"b":false,"z":null,"e":null,"c":"fixed","a":[1,2,3],'
        '"u":"s","o":{"x":-1},"nullable":"v"}',
    ],
}
INVALID = {
    "json_object": [
        "",
        "[]",
        '"s"',
        "{",
        '{"a"}',
        '{"a":}',
        '{ "a":1}',
        '{"a":1 }',
        '{"a":1,}',
        '{"a":01}',
        '{"a":1.}',
        '{"a":.5}',
        '{"a":+1}',
        '{"a":1e}',
        '{"a":1e100}',
        '{"a":1234567890123456}',
        '{"a":"\\x"}',
        '{"a":"\\ud800"}',
        '{"a":"\n"}',
        '{"a":tru}',
        '{"a":1}}',
        '{"a":1}\n',
        '{"a":  1}',
        '{"a":1,  "b":2}',
        '{\n"a":1}',
        '{"a":NaN}',
        '{"a":Infinity}',
    ],
    "person": [
        '{"age":31,"name":"John"}',
        '{"name":"John"}',
        '{"name":"J","age":1.5}',
        '{"name":"J","age":31,"x":1}',
        '{"name":1,"age":1}',
    ],
    "tree": ['{"value":1}', '{"value":1,"children":[{}]}'],
    "array": ['["a"]', "[]", '["a",1]'],
    "rich": ['{"s":"x"}'],
}
BAD_UTF8 = [
    b'{"a":"\xc0\xaf"}',
    b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\xf5\x80\x80\x80"}',
    b'{"a":"\xe2\x82"}',
    b'{"a":"\x80"}',
    b'{"a":"\xf0\x8f\xbf\xbf"}',
]


@pytest.mark.parametrize("name, text", [(n, t) for n, ts in VALID.items() for t in ts])
def test_valid_json_is_accepted_whole_and_byte_by_byte(name, text):
    grammar, data = compile_schema(SCHEMAS[name]), text.encode()
    assert accepts(grammar, data)
    state = grammar.initial
    for i, b in enumerate(data):
        assert not grammar.accepting(state) or name == "root_scalar"
        state = grammar.step(state, b)
        assert state, f"refused at byte {i}"
    assert grammar.accepting(state)
    validate(json.loads(text), _schema(name))


@pytest.mark.parametrize("name, text", [(n, t) for n, ts in INVALID.items() for t in ts])
def test_invalid_json_is_refused(name, text):
    assert not accepts(compile_schema(SCHEMAS[name]), text.encode())


@pytest.mark.parametrize("data", BAD_UTF8)
def test_invalid_utf8_is_refused(data):
    assert not accepts(compile_schema(None), data)


def test_affixes_wrap_the_value():
    grammar = compile_schema(PERSON).with_affixes(b"<tool_call>\n", b"\n</tool_call>")
    assert accepts(grammar, b'<tool_call>\n{"name":"a","age":1}\n</tool_call>')
    assert not accepts(grammar, b'{"name":"a","age":1}')
    assert not accepts(grammar, b'<tool_call>\n{"name":"a","age":1}')
    assert grammar.with_affixes(b"<tool_call>\n", b"\n</tool_call>") is grammar
    assert compile_schema(PERSON).with_affixes(b"<tool_call>\n", b"\n</tool_call>") is grammar


def test_shortest_completion_is_exact():
    grammar = compile_schema(PERSON)
    assert grammar.state_cost(grammar.initial) == len('{"name":"","age":0}')
    assert grammar.state_cost(grammar.walk(b'{"name":"ab')) == len('","age":0}')
    assert compile_schema(TREE).state_cost(compile_schema(TREE).initial) == len(
        '{"value":0,"children":[]}'
    )


def _random_text(grammar, rng: random.Random, budget: int) -> bytes:
    """A random walk over allowed bytes; past ``budget`` bytes, only bytes that shorten the
    shortest completion (which must always exist)."""
    state, out = grammar.initial, bytearray()
    while True:
        choices = sorted(grammar.next_bytes(state))
        if grammar.accepting(state) and (not choices or len(out) > budget or rng.random() < 0.1):
            return bytes(out)
        assert choices, f"dead end after {bytes(out)!r}"
        if len(out) > budget:
            cost = grammar.state_cost(state)
            choices = [b for b in choices if grammar.state_cost(grammar.step(state, b)) < cost]
        b = rng.choice(choices)
        state = grammar.step(state, b)
        assert state
        out.append(b)


@pytest.mark.parametrize("name", SCHEMAS)
def test_random_texts_parse_and_validate(name):
    grammar, rng = compile_schema(SCHEMAS[name]), random.Random(name)
    for _ in range(40):
        data = _random_text(grammar, rng, budget=rng.choice([5, 30, 120]))
        value = json.loads(data.decode("utf-8"))
        validate(value, _schema(name))


def test_frames_fit_their_bits():
    grammar = compile_schema(RICH)
    assert len(grammar.machines) > 1
    assert all(len(m.final) <= STATE_MASK for m in grammar.machines)


# ----- the validator -----


@pytest.mark.parametrize(
    "value, ok",
    [
        ({"name": "a", "age": 1}, True),
        ({"name": "a", "age": 1.0}, True),
        ({"name": "a", "age": True}, False),
        ({"name": "a"}, False),
        ({"name": "a", "age": 1, "x": 0}, False),
        ([], False),
    ],
)
def test_validate_person(value, ok):
    if ok:
        validate(value, PERSON)
    else:
        with pytest.raises(ValidationError):
            validate(value, PERSON)


def test_validate_enum_uses_json_equality():
    validate(1.0, {"enum": [1]})
    with pytest.raises(ValidationError):
        validate(True, {"enum": [1]})
    with pytest.raises(ValidationError):
        validate(0, {"const": False})
    validate({"value": 1, "children": [{"value": 2, "children": []}]}, TREE)
    with pytest.raises(ValidationError):
        validate({"value": 1, "children": [{"value": "x", "children": []}]}, TREE)
