"""One request and the means to answer it: the per-request response writer.

An ``Exchange`` renders status, headers and body (or a chunked stream) with mlxd/transport/h1.py
and hands the bytes to its connection (mlxd/transport/server.py), which owns the socket.
"""

from __future__ import annotations

import email.utils
import functools
import json
import re
import time
import uuid
from typing import TYPE_CHECKING

from mlxd import __version__
from mlxd.transport import h1
from mlxd.transport.errors import OPENAI_STYLE, ErrorStyle, HttpError

if TYPE_CHECKING:
    from mlxd.transport.server import Connection

JSON_TYPE = "application/json; charset=utf-8"
SERVER_HEADER = ("Server", f"mlxd/{__version__}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # what we echo back unchanged


class ClientGone(Exception):
    """The peer closed or stopped reading; nothing more can be sent."""


@functools.lru_cache(maxsize=1)
def _format_date(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def http_date() -> str:
    """The Date header value; formatted once per second, however many responses share it."""
    return _format_date(int(time.time()))


def error_body(err: HttpError, style: ErrorStyle = OPENAI_STYLE) -> bytes:
    return json.dumps(style.body(err), ensure_ascii=False).encode("utf-8")


# Stands in for a request we could not (fully) read, so a refusal can be answered and logged.
NO_REQUEST = h1.Request(h1.Head("-", "-", "-", "", "HTTP/1.1", (), False, False), b"")


class Exchange:
    """One request and the means to answer it, once (a JSON body or a chunked stream)."""

    def __init__(
        self,
        conn: Connection,
        request: h1.Request,
        path_param: str = "",
        route: str = "other",
        errors: ErrorStyle = OPENAI_STYLE,
    ) -> None:
        self.conn = conn
        self.request = request
        self.path_param = path_param
        self.route = route  # the route pattern, a metrics label
        self.errors = errors  # the shape of this route's errors
        self.head_only = request.head.method == "HEAD"
        self.keep_alive = request.head.keep_alive
        self.started = time.monotonic()
        self.request_id = _request_id(request)
        self.extra_headers: list[tuple[str, str]] = [("X-Request-Id", self.request_id)]
        # Per-request state, for the access log and metrics.
        self.status: int | None = None
        self.streaming = False
        self.tokens = (0, 0)
        self.error: HttpError | None = None

    def note_tokens(self, prompt: int, completion: int) -> None:
        self.tokens = (prompt, completion)

    def note_error(self, err: HttpError) -> None:
        self.error = err

    def _headers(self, content_type: str | None, extra=()) -> list[tuple[str, str]]:
        headers = [("Date", http_date()), SERVER_HEADER]
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.extend(self.extra_headers)
        headers.extend(extra)
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        return headers

    async def send(self, status: int, body: bytes, content_type: str | None, headers=()) -> None:
        self.status = status
        await self.conn.write(
            h1.render_response(
                status, self._headers(content_type, headers), body, head_only=self.head_only
            )
        )

    async def send_json(self, status: int, obj: object, headers=()) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        await self.send(status, body, JSON_TYPE, headers)

    async def send_error(self, err: HttpError) -> None:
        self.error = err
        if err.close:
            self.keep_alive = False
        await self.send(err.status, error_body(err, self.errors), JSON_TYPE, err.headers)

    async def start_stream(self, content_type: str) -> None:
        self.status, self.streaming = 200, True
        extra = [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
        if self.request.head.version == "HTTP/1.0":
            # No chunked coding in 1.0: the stream ends when the connection does.
            self.keep_alive = False
            head = h1.render_head(200, self._headers(content_type, extra))
        else:
            head = h1.render_stream_head(200, self._headers(content_type, extra))
        await self.conn.write(head)

    async def send_chunk(self, data: bytes) -> None:
        if self.head_only:
            return
        chunked = self.request.head.version != "HTTP/1.0"
        await self.conn.write(h1.render_chunk(data) if chunked else data)

    async def end_stream(self) -> None:
        if self.request.head.version != "HTTP/1.0" and not self.head_only:
            await self.conn.write(h1.LAST_CHUNK)


def _request_id(request: h1.Request) -> str:
    given = request.head.header("x-request-id")
    return given if given and REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
