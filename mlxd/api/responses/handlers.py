"""The Responses API routes: create (whole or streamed), retrieve, delete, list input items,
count input tokens. Handlers are ``async def handler(app, ex)``, as in mlxd/api/app.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlxd.api.fieldtable import Body, Field
from mlxd.api.openapi import operation
from mlxd.api.responses.generate import prepare, respond
from mlxd.api.responses.request import InputTokensRequest, ResponsesRequest
from mlxd.transport.errors import NOT_FOUND, HttpError, bad_request

if TYPE_CHECKING:
    from mlxd.api.app import App

MAX_LIST_LIMIT = 100  # OpenAI's page size limits for input_items
DEFAULT_LIST_LIMIT = 20
INPUT_ITEMS = "input_items"

RETRIEVE_QUERY = Body(
    (Field("stream", "boolean", "Only false: a stored response is whole.", False),)
)
INPUT_ITEMS_QUERY = Body(
    (
        Field("after", "string", "List the items after this item id.", "msg_0123"),
        Field(
            "limit",
            "integer",
            f"Items per page (default {DEFAULT_LIST_LIMIT}).",
            DEFAULT_LIST_LIMIT,
            schema={"minimum": 1, "maximum": MAX_LIST_LIMIT},
        ),
        Field(
            "order",
            "string",
            'Newest first ("desc", the default) or oldest first ("asc").',
            "desc",
            schema={"enum": ["asc", "desc"]},
        ),
    )
)


@operation(
    "Create a response (OpenAI Responses API)",
    body=ResponsesRequest,
    streams=True,
    example={"max_output_tokens": 40},
    doc="Runs in the same continuous batch as chat requests. With `stream: true`, semantic "
    "events (`response.created` ... `response.completed`) with sequence numbers.",
)
async def create_response(app: App, ex) -> None:
    app.require_ready()
    req = ResponsesRequest.from_json(ex.request.body)
    await respond(app, ex, req, await prepare(app, req))


@operation(
    "Count a response's input tokens",
    body=InputTokensRequest,
    doc="The tokens the prompt of POST /v1/responses would hold for the same fields.",
)
async def input_tokens(app: App, ex) -> None:
    app.require_ready()
    prepared = await prepare(app, InputTokensRequest.from_json(ex.request.body))
    await ex.send_json(
        200, {"object": "response.input_tokens", "input_tokens": len(prepared.prompt)}
    )


@operation(
    "List the input items of a stored response",
    path="/v1/responses/{id}/input_items",
    query=INPUT_ITEMS_QUERY,
    doc="Every item the response was generated from: those of the responses it continued, "
    "then its own input.",
)
@operation(
    "Retrieve a stored response",
    path="/v1/responses/{id}",
    query=RETRIEVE_QUERY,
    doc="Responses are kept in memory (--responses-store-bytes); an evicted one is a 404 "
    "that says so.",
)
async def get_response(app: App, ex) -> None:
    rid, _, rest = ex.path_param.partition("/")
    if rest == INPUT_ITEMS:
        query = INPUT_ITEMS_QUERY.parse_query(ex.request.head.query)
        await ex.send_json(200, _page(app.responses.get(rid).context, query))
    elif not rest:
        if RETRIEVE_QUERY.parse_query(ex.request.head.query).get("stream"):
            raise bad_request(
                "a stored response cannot be streamed again", "stream", "unsupported_parameter"
            )
        await ex.send_json(200, app.responses.get(rid).response)
    else:
        raise HttpError(404, NOT_FOUND, f"no route for {ex.request.head.path}", code="not_found")


@operation("Delete a stored response", path="/v1/responses/{id}")
async def delete_response(app: App, ex) -> None:
    rid = ex.path_param
    app.responses.delete(rid)
    await ex.send_json(200, {"id": rid, "object": "response", "deleted": True})


def _page(items: tuple[dict, ...], query: dict) -> dict:
    limit = query.get("limit") or DEFAULT_LIST_LIMIT
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise bad_request(f"'limit' must be between 1 and {MAX_LIST_LIMIT}", "limit")
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be 'asc' or 'desc'", "order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise bad_request(f"no input item has the id {after!r}", "after")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > limit,
    }
