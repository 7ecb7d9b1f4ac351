"""The route table lookup and the error style a route gives its errors; API keys from either
header. Pure functions: no socket."""

from __future__ import annotations

import asyncio

import pytest

from mlxd.transport import access, h1, routing
from mlxd.transport.errors import OPENAI_STYLE, ErrorStyle, HttpError

STYLE = ErrorStyle(lambda err: {"custom": err.message}, lambda err: b"event: error\n\n")


async def plain(_app, _ex):
    pass


async def styled(_app, _ex):
    pass


ROUTES = {
    ("GET", "/plain"): plain,
    ("POST", "/styled"): routing.Styled(styled, STYLE),
    ("GET", "/items/"): plain,
}


def test_a_route_carries_its_error_style():
    found = routing.route(ROUTES, "POST", "/styled")
    assert found.error is None and found.errors is STYLE
    assert routing.route(ROUTES, "GET", "/plain").errors is OPENAI_STYLE
    # Refusals on a styled path take its style too; a path with no route takes OpenAI's.
    refused = routing.route(ROUTES, "GET", "/styled")
    assert refused.error.status == 405 and refused.errors is STYLE
    missing = routing.route(ROUTES, "POST", "/nowhere")
    assert missing.error.status == 404 and missing.errors is OPENAI_STYLE
    assert routing.route(ROUTES, "GET", "/items/7").param == "7"


def test_a_styled_handler_is_called_as_the_one_it_wraps():
    seen = []

    async def handler(app, ex):
        seen.append((app, ex))

    asyncio.run(routing.Styled(handler, STYLE)("app", "ex"))
    assert seen == [("app", "ex")]


def head(*headers: tuple[str, str]) -> h1.Head:
    fields = tuple((name.lower(), value) for name, value in headers)  # as the parser stores them
    return h1.Head("POST", "/v1/messages", "/v1/messages", "", "HTTP/1.1", fields, True, False)


@pytest.mark.parametrize(
    "headers,ok",
    [
        ((("Authorization", "Bearer k1"),), True),
        ((("x-api-key", "k2"),), True),
        ((("x-api-key", "nope"),), False),
        ((("Authorization", "k1"),), False),  # no scheme
        ((("Authorization", "Bearer nope"), ("x-api-key", "k1")), False),  # Bearer wins
        ((), False),
    ],
)
def test_the_key_comes_in_either_header(headers, ok):
    err = access.auth_error(head(*headers), ("k1", "k2"))
    assert (err is None) == ok
    if not ok:
        assert isinstance(err, HttpError) and err.status == 401
