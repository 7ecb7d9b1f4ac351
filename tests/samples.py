"""Requests and schemas that several test modules share (one copy of each)."""

from __future__ import annotations

from mlxd.api.toolcalls import PARSERS, ToolFormat

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def fmt(name: str) -> ToolFormat:
    m = PARSERS[name]
    return ToolFormat(name, m.tool_call_start, m.tool_call_end, m.parse_tool_call)


PERSON = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "age"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
}
TREE = {
    "$defs": {
        "node": {
            "type": "object",
            "additionalProperties": False,
            "required": ["value", "children"],
            "properties": {
                "value": {"type": "integer"},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
        }
    },
    "$ref": "#/$defs/node",
}
RICH = {
    "type": "object",
    "title": "Rich",
    "description": "every supported keyword",
    "additionalProperties": False,
    "required": ["s", "n", "i", "b", "z", "e", "c", "a", "u", "o", "nullable"],
    "properties": {
        "s": {"type": "string", "description": "ignored"},
        "n": {"type": "number"},
        "i": {"type": "integer"},
        "b": {"type": "boolean"},
        "z": {"type": "null"},
        "e": {"enum": ["red", "green", 3, None, {"k": [1]}]},
        "c": {"const": "fixed"},
        "a": {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
        "u": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/point"}]},
        "o": {"type": "object", "properties": {"x": {"type": "number"}}},  # x optional
        "nullable": {"type": ["string", "null"]},
        "opt": {"type": "boolean"},
    },
    "$defs": {
        "point": {
            "type": "object",
            "additionalProperties": False,
            "required": ["x", "y"],
            "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
        }
    },
}
