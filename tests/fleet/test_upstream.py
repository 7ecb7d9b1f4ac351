"""The front end's HTTP/1.1 client: request rendering and response parsing as bytes, and bodies
read piece by piece from a reader fed whole, byte by byte, and cut short."""

from __future__ import annotations

import asyncio

import pytest

from mlxd.fleet import upstream
from mlxd.transport import h1

RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def test_render_request_drops_hop_by_hop_fields_and_frames_the_body():
    fields = [
        ("connection", "keep-alive, x-private"),
        ("x-private", "1"),
        ("content-length", "999"),
        ("transfer-encoding", "chunked"),
        ("host", "example"),
        ("x-request-id", "client-id"),
        ("accept", "text/event-stream"),
    ]
    raw = upstream.render_request("POST", "/v1/x?a=1", fields, b'{"a":1}', "front-id")
    parser = h1.RequestParser()
    parser.feed(raw)
    request = parser.maybe_next_request()
    assert request is not None and request.body == b'{"a":1}'
    head = request.head
    assert (head.method, head.target) == ("POST", "/v1/x?a=1")
    assert (
        head.header("x-request-id") == "front-id" and head.header("accept") == "text/event-stream"
    )
    assert head.header("x-private") is None and head.header("content-length") == "7"
    assert upstream.render_request("GET", "/h", [], b"", "i").count(b"Content-Length") == 0


def test_parse_response_head():
    status, fields = upstream.parse_response_head(RESPONSE_HEAD)
    assert status == 200 and ("transfer-encoding", "chunked") in fields
    with pytest.raises(upstream.UpstreamError):
        upstream.parse_response_head(b"SPDY/3 200 OK\r\n\r\n")
    assert upstream.chunk_size(b"1a;ext=1\r\n") == 26
    with pytest.raises(upstream.UpstreamError):
        upstream.chunk_size(b"zz\r\n")


def _pieces(data: bytes, step: int) -> list[bytes]:
    async def go() -> list[bytes]:
        reader = asyncio.StreamReader()
        status, fields = upstream.parse_response_head(RESPONSE_HEAD)
        resp = upstream.Response(status, fields, reader, None)  # type: ignore[arg-type]
        for i in range(0, len(data), step):
            reader.feed_data(data[i : i + step])
        reader.feed_eof()
        return [p async for p in resp.pieces()]

    return asyncio.run(go())


BODY = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"


@pytest.mark.parametrize("step", [len(BODY), 1, 3])
def test_chunks_come_out_one_by_one(step):
    assert _pieces(BODY, step) == [b"hello", b" world"]


def test_a_body_cut_short_is_an_upstream_error():
    with pytest.raises(upstream.UpstreamError, match="broke"):
        _pieces(BODY[:12], 1)
