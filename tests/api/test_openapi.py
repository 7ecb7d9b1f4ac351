"""/openapi.json is generated from the route table and the request records' field tables: every
route appears, the document is valid OpenAPI 3.1, and what it documents is what validation
does (each documented field's example is accepted, a value of another type and an undocumented
field are refused, naming the field)."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

from mlxd import __version__
from mlxd.api.fieldtable import Body, Field
from mlxd.api.openapi import build_spec, operations
from mlxd.api.routes import PUBLIC_PATHS, ROUTES
from mlxd.transport.errors import HttpError

from helpers import ServerThread, get_json

SPEC = build_spec(ROUTES, __version__)
DESCRIBED = [
    (method, path, doc_path, op)
    for (method, path), handler in ROUTES.items()
    for doc_path, op in operations(method, path, handler)
]
RECORDS = {op.body for *_, op in DESCRIBED if op.body is not None}
BODY_FIELDS = [(record, f) for record in RECORDS for f in record.BODY.fields]
QUERIES = {op.query for *_, op in DESCRIBED if op.query is not None}
QUERY_FIELDS = [(query, f) for query in QUERIES for f in query.fields]
# A value of each JSON type: the "wrong type" probe takes the first one a field refuses.
PROBES = {"string": "text", "integer": 7, "number": 0.5, "boolean": True, "object": {}, "array": []}


def test_the_document_is_valid_openapi_3_1():
    validate(SPEC)
    assert SPEC["openapi"] == "3.1.0" and SPEC["info"]["version"] == __version__


@pytest.mark.parametrize("method,path", sorted(ROUTES))
def test_every_route_is_described(method, path):
    handler = ROUTES[method, path]
    assert getattr(handler, "operations", ()), f"{method} {path} has no @operation"
    for doc_path, op in operations(method, path, handler):
        assert method.lower() in SPEC["paths"][doc_path]
        assert doc_path.startswith(path) if path.endswith("/") else doc_path == path
        if method == "POST":
            assert op.body is not None, f"{method} {path} documents no body"
            assert SPEC["paths"][doc_path]["post"]["requestBody"]["content"]


def _id(value) -> str:
    if isinstance(value, tuple):
        record, f = value
        return f"{getattr(record, '__name__', 'query')}.{f.name}"
    return ""


def body_with(record, f: Field, value) -> dict:
    return {**record.BODY.example(), **f.context, f.name: value}


def parse(record, body: dict):
    return record.from_json(json.dumps(body).encode())


@pytest.mark.parametrize("record,field", BODY_FIELDS, ids=[_id(x) for x in BODY_FIELDS])
def test_each_documented_field_is_accepted(record, field):
    parse(record, body_with(record, field, field.example))


@pytest.mark.parametrize("record,field", BODY_FIELDS, ids=[_id(x) for x in BODY_FIELDS])
def test_a_value_of_another_type_is_refused_naming_the_field(record, field):
    wrong = next(v for v in PROBES.values() if not field.accepts(v))
    with pytest.raises(HttpError) as info:
        parse(record, body_with(record, field, wrong))
    assert info.value.status == 400 and info.value.param == field.name, info.value.message


@pytest.mark.parametrize("record", sorted(RECORDS, key=lambda r: r.__name__))
def test_required_fields_and_undocumented_ones(record):
    body: Body = record.BODY
    parse(record, body.example())
    for f in body.fields:
        if f.required:
            with pytest.raises(HttpError) as info:
                parse(record, {k: v for k, v in body.example().items() if k != f.name})
            assert info.value.param == f.name
    with pytest.raises(HttpError) as info:
        parse(record, {**body.example(), "no_such_field": 1})
    assert info.value.param == "no_such_field" and info.value.code == "unknown_parameter"


@pytest.mark.parametrize("query,field", QUERY_FIELDS, ids=[f.name for _, f in QUERY_FIELDS])
def test_query_fields_are_read_as_documented(query, field):
    value = field.example
    text = str(value).lower() if isinstance(value, bool) else str(value)
    assert query.parse_query(f"{field.name}={text}") == {field.name: value}
    with pytest.raises(HttpError) as info:
        query.parse_query("no_such_parameter=1")
    assert info.value.param == "no_such_parameter"


def test_served_without_a_key_and_with_the_docs_page(tiny_model_dir):
    from mlxd.service.config import Config

    srv = ServerThread(Config(model=str(tiny_model_dir), port=0, api_keys=("k",))).start(
        wait_ready=False
    )
    try:
        assert {"/docs", "/openapi.json"} <= PUBLIC_PATHS
        status, spec = get_json(srv.url + "/openapi.json")
        assert status == 200 and spec == json.loads(json.dumps(SPEC))
        assert get_json(srv.url + "/v1/models")[0] == 401
        import urllib.request

        with urllib.request.urlopen(srv.url + "/docs", timeout=10) as resp:
            assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
            page = resp.read().decode()
        assert "/openapi.json" in page and "<script" in page
        assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    finally:
        srv.close()
