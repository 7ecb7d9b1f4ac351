"""GET /openapi.json and GET /docs: the API described from the route table that serves it.

A handler says what it is with ``@operation(...)``: a summary, and the request record whose
``BODY`` table (mlxd/api/fieldtable.py) both validates its body and documents it, or the query table
of a GET. ``build_spec`` walks the route table (mlxd/api/app.py's ROUTES) and writes an OpenAPI
3.1 document from those, so a route or field cannot be served without being described;
tests/api/test_openapi.py holds every route and field to it.

/docs is one page of our own (mlxd/api/static/docs.html, package data: no CDN, no network) that
reads /openapi.json and renders each operation with a form to try it.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlxd.api.fieldtable import Body

DOCS_PAGE = "static/docs.html"
HTML_TYPE = "text/html; charset=utf-8"
PATH_PARAM = re.compile(r"\{(\w+)\}")
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type"],
        }
    },
    "required": ["error"],
}
# Anthropic's routes answer errors in Anthropic's shape (mlxd/api/anthropic_messages/errors.py).
ANTHROPIC_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            "required": ["type", "message"],
        },
    },
    "required": ["type", "error"],
}
# Operation.errors -> (the component schema, its words).
ERROR_SHAPES = {
    "openai": ("Error", "An error, in OpenAI's shape"),
    "anthropic": ("AnthropicError", "An error, in Anthropic's shape"),
}


@dataclass(frozen=True)
class Operation:
    """What one route does, for the docs (one handler may serve several documented paths)."""

    summary: str
    body: Any = None  # a request record: ``BODY`` (a fields.Body) and ``from_json``
    query: Body | None = None  # the query parameters a GET reads
    path: str | None = None  # the documented path of a prefix route: "/v1/responses/{id}"
    streams: bool = False  # answers text/event-stream when the body says "stream": true
    doc: str = ""
    example: Mapping[str, Any] = field(default_factory=dict)  # added to the body's example
    content_type: str = "application/json"  # of a 200 answer
    errors: str = "openai"  # the shape of its errors: a key of ERROR_SHAPES


def operation(summary: str, **details: Any) -> Callable:
    """Describe a handler (stack several for a prefix route that serves several paths)."""

    def mark(handler: Callable) -> Callable:
        ops = (Operation(summary, **details), *getattr(handler, "operations", ()))
        setattr(handler, "operations", ops)  # noqa: B010 - a function attribute, read below
        return handler

    return mark


def operations(method: str, path: str, handler: Callable) -> tuple[tuple[str, Operation], ...]:
    """(documented path, operation) pairs for one route of the table."""
    ops = getattr(handler, "operations", ())
    if not ops:  # undescribed: listed anyway (its docstring's first line); the test flags it
        summary = (handler.__doc__ or f"{method} {path}").strip().splitlines()[0]
        ops = (Operation(summary),)
    default = path + "{id}" if path.endswith("/") else path
    return tuple((op.path or default, op) for op in ops)


def build_spec(routes: Mapping[tuple[str, str], Callable], version: str) -> dict:
    paths: dict[str, dict] = {}
    for (method, path), handler in routes.items():
        for doc_path, op in operations(method, path, handler):
            paths.setdefault(doc_path, {})[method.lower()] = _operation(method, doc_path, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mlxd",
            "version": version,
            "description": "A local inference server for one MLX model: OpenAI-compatible "
            "chat completions, completions and Responses, and Anthropic's Messages. Every "
            "request field is honoured or refused with a 400 naming it; null is the same as "
            "leaving a field out.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA, "AnthropicError": ANTHROPIC_ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        # A key is needed only when the server was started with --api-key; either header.
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    }


def _operation(method: str, path: str, op: Operation) -> dict:
    out: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(method, path)}
    if op.doc:
        out["description"] = op.doc
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": f"The {name} named in the path.",
            "schema": {"type": "string"},
        }
        for name in PATH_PARAM.findall(path)
    ]
    if op.query is not None:
        params += [
            {
                "name": f.name,
                "in": "query",
                "required": f.required,
                "description": f.doc,
                "schema": f.json_schema(),
            }
            for f in op.query.fields
        ]
    if params:
        out["parameters"] = params
    if op.body is not None:
        body: Body = op.body.BODY
        out["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": body.json_schema(),
                    "example": {**body.example(), **op.example},
                }
            },
        }
    answer: dict[str, Any] = {op.content_type: {}}
    if op.streams:
        answer["text/event-stream"] = {}
    schema, words = ERROR_SHAPES[op.errors]
    out["responses"] = {
        "200": {"description": "OK", "content": answer},
        "default": {
            "description": words,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        },
    }
    return out


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", path.replace("{", "by_").replace("}", "")).strip("_")
    return f"{method.lower()}_{words or 'root'}"


@functools.cache
def docs_page() -> bytes:
    """The /docs page, from the package's own files (read once)."""
    return importlib.resources.files("mlxd.api").joinpath(DOCS_PAGE).read_bytes()
