"""A small HTTP/1.1 client over a Unix socket: how the front end of ``--models`` talks to a worker.

One connection per request (a Unix socket costs microseconds to open), so that closing it is how
a request is cancelled: the worker's server sees the end of the stream and cancels the job, as it
would for any client that goes away. The response body comes back piece by piece as the worker
sends it (one chunk of a chunked stream is one SSE event); nothing is buffered beyond a piece.
Rendering the request and parsing the response head are pure functions of bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024  # a worker's response head is a few hundred bytes; this is generous
MAX_CHUNK_LINE_BYTES = 1024  # a chunk-size line: hex digits and perhaps extensions
READ_BYTES = 64 * 1024  # pieces of a body with a Content-Length, or read to the end
STREAM_LIMIT_BYTES = 1024 * 1024  # asyncio's reader buffer: room for a whole SSE event
# RFC 9110 7.6.1: connection-specific fields, never forwarded by an intermediary; plus the
# framing (ours to compute), Host and Expect (ours), the request id (the front end's own).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "expect",
        "x-request-id",
    }
)


class UpstreamError(Exception):
    """The worker could not be reached, or closed the connection before the response ended."""


def forwardable(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The end-to-end fields of a message, for the next hop (names as given)."""
    headers = list(headers)
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def render_request(
    method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes, request_id: str
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", f"X-Request-Id: {request_id}"]
    lines += [f"{name}: {value}" for name, value in forwardable(headers)]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_response_head(data: bytes) -> tuple[int, list[tuple[str, str]]]:
    """(status, [(lower-cased name, value)]) of a response head ending in CRLF CRLF."""
    try:
        status_line, *field_lines = data.decode("latin-1").split("\r\n")
        version, status, *_reason = status_line.split(" ", 2)
        if not version.startswith("HTTP/1.") or len(status) != 3:
            raise ValueError(status_line)
        headers = []
        for line in field_lines:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        return int(status), headers
    except ValueError as exc:
        raise UpstreamError(f"malformed response head: {exc}") from None


def chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (RFC 9112 7.1), extensions ignored."""
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise UpstreamError(f"malformed chunk-size line {line[:40]!r}") from None


@dataclass
class Response:
    """A worker's response: status and fields read; the body still to come through ``pieces``."""

    status: int
    headers: list[tuple[str, str]]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.header("transfer-encoding") or "").lower()

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each chunk of a chunked body, or reads of a plain one."""
        try:
            if self.chunked:
                async for piece in self._chunks():
                    yield piece
                return
            length = self.header("content-length")
            left = int(length) if length is not None else None
            while left is None or left > 0:
                piece = await self.reader.read(
                    READ_BYTES if left is None else min(left, READ_BYTES)
                )
                if not piece:
                    if left is not None:
                        raise UpstreamError("the worker closed the connection mid-body")
                    return
                if left is not None:
                    left -= len(piece)
                yield piece
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise UpstreamError(f"the connection to the worker broke: {exc!r}") from None

    async def _chunks(self) -> AsyncIterator[bytes]:
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if len(line) > MAX_CHUNK_LINE_BYTES:
                raise UpstreamError("chunk-size line too long")
            size = chunk_size(line)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers: dropped
                    pass
                return
            data = await self.reader.readexactly(size + 2)
            yield data[:-2]

    async def body(self) -> bytes:
        return b"".join([piece async for piece in self.pieces()])

    def close(self) -> None:
        """Closing the connection is what cancels the worker's job, if it still runs."""
        with contextlib.suppress(Exception):
            self.writer.close()


async def request(
    socket_path: str,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    request_id: str = "-",
) -> Response:
    """Send one request to the server on ``socket_path``; returns once the response head is in.
    The caller must ``close()`` the response (also when it stops reading early)."""
    try:
        reader, writer = await asyncio.open_unix_connection(socket_path, limit=STREAM_LIMIT_BYTES)
    except OSError as exc:
        raise UpstreamError(f"cannot connect to the worker: {exc.strerror or exc}") from None
    try:
        writer.write(render_request(method, target, headers, body, request_id))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        writer.close()
        raise UpstreamError("the worker's response head is too large") from None
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        writer.close()
        raise UpstreamError(f"the worker closed the connection: {exc!r}") from None
    except BaseException:
        writer.close()
        raise
    if len(head) > MAX_HEAD_BYTES:
        writer.close()
        raise UpstreamError("the worker's response head is too large")
    status, fields = parse_response_head(head)
    return Response(status, fields, reader, writer)


async def _get(socket_path: str, target: str, timeout: float) -> tuple[int, bytes] | None:
    """(status, body) of a GET, or None when the worker cannot answer in time."""
    try:
        async with asyncio.timeout(timeout):
            resp = await request(socket_path, "GET", target)
            try:
                return resp.status, await resp.body()
            finally:
                resp.close()
    except (UpstreamError, TimeoutError):
        return None


async def get_json(socket_path: str, target: str, timeout: float) -> tuple[int, object] | None:
    """(status, parsed JSON body) of a GET, or None when the worker cannot answer in time (or
    answers with something that is not JSON)."""
    got = await _get(socket_path, target, timeout)
    if got is None:
        return None
    status, data = got
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return None


async def get_text(socket_path: str, target: str, timeout: float) -> str | None:
    """The body of a 200 GET as text, or None."""
    got = await _get(socket_path, target, timeout)
    if got is None or got[0] != 200:
        return None
    return got[1].decode("utf-8", "replace")
