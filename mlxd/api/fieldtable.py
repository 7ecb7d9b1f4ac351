"""Request fields, declared once: the tables that validation reads and /openapi.json is made of.

Each request record (``ChatRequest``, ``ResponsesRequest``, ...) names its body's fields in a
``Body`` of ``Field``s: name, JSON type(s), whether it is required, a line of documentation and an
example value. Validation takes the names (anything else is refused), the required ones and the
top-level types from the table before the record's own parsers look deeper; the OpenAPI document
is generated from the same table, so the two cannot drift. ``tests/api/test_openapi.py`` sends
every documented field's example (accepted) and a value of another type (refused, naming it).
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlxd.transport.errors import bad_request

# JSON type -> the Python types json.loads gives for it. bool is an int subclass: checked apart.
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
ARTICLES = {"integer": "an", "object": "an", "array": "an"}


def json_type_of(value: Any) -> str:
    """The JSON type name of a parsed JSON value ("null" for None)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return next(name for name, kinds in JSON_TYPES.items() if isinstance(value, kinds))


def _a(kind: str) -> str:
    return f"{ARTICLES.get(kind, 'a')} {kind}"


@dataclass(frozen=True)
class Field:
    """One top-level field of a request body (or query string)."""

    name: str
    type: str | tuple[str, ...]  # JSON type(s) of a given (non-null) value
    doc: str
    example: Any  # a value validation accepts; the OpenAPI test sends it
    required: bool = False
    schema: Mapping[str, Any] = field(default_factory=dict)  # more JSON Schema for the docs
    context: Mapping[str, Any] = field(default_factory=dict)  # what the example needs beside it

    @property
    def types(self) -> tuple[str, ...]:
        return (self.type,) if isinstance(self.type, str) else self.type

    def accepts(self, value: Any) -> bool:
        kind = json_type_of(value)
        return kind in self.types or (kind == "integer" and "number" in self.types)

    def what(self) -> str:
        """The accepted types in words: "a string or an array"."""
        return " or ".join(_a(t) for t in self.types)

    def json_schema(self) -> dict:
        types = list(self.types)
        out: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
        out.update(self.schema)
        out["description"] = self.doc
        out["examples"] = [self.example]
        return out


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one table per body
class Body:
    """The fields of one request body; ``check`` refuses what the table does not allow."""

    fields: tuple[Field, ...]
    doc: str = ""

    @functools.cached_property
    def by_name(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    def check(self, obj: dict) -> None:
        """Unknown fields, missing required ones and values of the wrong JSON type are 400s
        naming the field. ``null`` means "not given", as everywhere in mlxd."""
        for key, value in obj.items():
            spec = self.by_name.get(key)
            if spec is None:
                raise bad_request(
                    f"Unrecognized request argument supplied: {key}", key, "unknown_parameter"
                )
            if value is not None and not spec.accepts(value):
                raise bad_request(
                    f"'{key}' must be {spec.what()}, not {_a(json_type_of(value))}", key
                )
        for spec in self.fields:
            if spec.required and obj.get(spec.name) is None:
                raise bad_request(f"'{spec.name}' is required", spec.name)

    def example(self) -> dict:
        """The smallest body the table describes: the required fields' examples."""
        return {f.name: f.example for f in self.fields if f.required}

    def json_schema(self) -> dict:
        out: dict[str, Any] = {
            "type": "object",
            "properties": {f.name: f.json_schema() for f in self.fields},
            "additionalProperties": False,
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            out["required"] = required
        if self.doc:
            out["description"] = self.doc
        return out

    def parse_query(self, query: str) -> dict:
        """A query string as this table reads it: integers and booleans converted, an array
        from repeated keys (``include=a&include=b``, or ``include[]=...`` as the SDK writes)."""
        out: dict[str, Any] = {}
        for raw_key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
            key = raw_key.removesuffix("[]")
            spec = self.by_name.get(key)
            if spec is None:
                raise bad_request(f"Unrecognized query parameter: {key}", key, "unknown_parameter")
            if "array" in spec.types:
                out.setdefault(key, []).append(value)
            elif "integer" in spec.types:
                if not value.lstrip("-").isdigit():
                    raise bad_request(f"'{key}' must be an integer, got {value!r}", key)
                out[key] = int(value)
            elif "boolean" in spec.types:
                if value not in ("true", "false"):
                    raise bad_request(f"'{key}' must be true or false, got {value!r}", key)
                out[key] = value == "true"
            else:
                out[key] = value
        self.check(out)
        return out
