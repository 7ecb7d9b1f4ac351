"""The asyncio shell: accept, read, parse (h1.py), route (api.ROUTES), write, drain, time out.

Everything protocol-shaped lives in h1.py and sse.py, everything OpenAI-shaped in api.py; this
module only moves bytes and decides when a connection lives or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

from mlxd import __version__
from mlxd.transport import access
from mlxd.transport import h1
from mlxd.transport import sse
from mlxd.transport.errors import NOT_FOUND, SERVER_ERROR, UNAVAILABLE, HttpError
from mlxd.transport.metrics import Metrics

log = logging.getLogger("mlxd.server")
access_log = logging.getLogger("mlxd.access")

READ_CHUNK_BYTES = 64 * 1024
JSON_TYPE = "application/json; charset=utf-8"
SERVER_HEADER = ("Server", f"mlxd/{__version__}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:\-]{1,128}")   # what we echo back unchanged
FINAL_WRITE_S = 1.0            # a last error to a client during shutdown may take this long


@dataclass(frozen=True)
class ServerSettings:
    max_body_bytes: int = h1.DEFAULT_MAX_BODY_BYTES
    max_connections: int = 1024      # past this, new connections get a 503 and are closed
    keep_alive_timeout: float = 5.0  # idle time between requests on one connection (uvicorn's)
    head_timeout: float = 10.0       # a whole request head must arrive within this (slowloris)
    body_timeout: float = 30.0       # a whole body must arrive within this once the head is in
    send_timeout: float = 60.0       # a client that reads nothing for this long is gone
    api_keys: tuple[str, ...] = ()
    auth_health: bool = False        # /health and /metrics need the key too
    cors_origins: tuple[str, ...] = ()


Handler = Callable[..., Awaitable[None]]


class ClientGone(Exception):
    """The peer closed or stopped reading; nothing more can be sent."""


def _http_date(_cache: dict = {}) -> str:
    now = int(time.time())
    if _cache.get("t") != now:
        _cache["t"], _cache["v"] = now, email.utils.formatdate(now, usegmt=True)
    return _cache["v"]


def error_body(err: HttpError) -> bytes:
    return json.dumps(err.to_json(), ensure_ascii=False).encode("utf-8")


_NO_REQUEST = h1.Request(h1.Head("-", "-", "-", "", "HTTP/1.1", (), False, False), b"")


class Exchange:
    """One request and the means to answer it, once (a JSON body or a chunked stream)."""

    def __init__(self, conn: "Connection", request: h1.Request, path_param: str = "",
                 route: str = "other") -> None:
        self.conn = conn
        self.request = request
        self.path_param = path_param
        self.route = route                    # the route pattern, a metrics label
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
        headers = [("Date", _http_date()), SERVER_HEADER]
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.extend(self.extra_headers)
        headers.extend(extra)
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        return headers

    async def send(self, status: int, body: bytes, content_type: str | None, headers=()) -> None:
        self.status = status
        await self.conn.write(h1.render_response(status, self._headers(content_type, headers),
                                                   body, head_only=self.head_only))

    async def send_json(self, status: int, obj: object, headers=()) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        await self.send(status, body, JSON_TYPE, headers)

    async def send_error(self, err: HttpError) -> None:
        self.error = err
        if err.close:
            self.keep_alive = False
        await self.send(err.status, error_body(err), JSON_TYPE, err.headers)

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


class Connection:
    """One client socket: a pump task reads into the parser; the main loop answers requests."""

    def __init__(self, server: "Server", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.settings = server.settings
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        # Per-connection state.
        self.parser = h1.RequestParser(max_body_bytes=self.settings.max_body_bytes)
        self.data_arrived = asyncio.Event()
        self.eof = False
        self.in_flight: asyncio.Task | None = None
        # Per-request state.
        self.continue_sent = False

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ClientGone()
        self.writer.write(data)
        if not self.writer.transport.get_write_buffer_size():
            return   # all handed to the kernel: nothing to wait for (and no task to make)
        try:
            # Backpressure: a slow reader waits here, alone; other connections keep going.
            await asyncio.wait_for(self.writer.drain(), self.settings.send_timeout)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            raise ClientGone() from exc

    async def _pump(self) -> None:
        try:
            while data := await self.reader.read(READ_CHUNK_BYTES):
                self.parser.feed(data)
                self.data_arrived.set()
        except (ConnectionError, OSError):
            pass
        self.eof = True
        self.parser.feed_eof()
        self.data_arrived.set()
        if self.in_flight is not None:   # the client left mid-request: stop its work
            self.in_flight.cancel()

    async def serve(self) -> None:
        pump = asyncio.create_task(self._pump())
        try:
            while not self.server.closing:
                request = await self._next_request()
                if request is None:
                    break
                ex = await self._handle(request)
                if not ex.keep_alive:
                    break
        except ClientGone:
            pass
        finally:
            pump.cancel()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _next_request(self) -> h1.Request | None:
        """The next complete request, or None when the connection should close."""
        started = time.monotonic()
        while not self.server.closing:
            try:
                request = self.parser.maybe_next_request()
            except HttpError as err:
                await self.refuse(err)
                return None
            if request is not None:
                return request
            if self.eof:
                return None
            head = self.parser.maybe_pending_head()
            if head is not None and head.expects_continue and not self.continue_sent:
                if not await self._maybe_continue(head):
                    return None
            timeout = self._read_timeout(started, head)
            if timeout <= 0:
                if self.parser.buffered or head is not None:
                    await self.refuse(HttpError(408, "invalid_request_error",
                                                "request timed out", close=True))
                return None
            self.data_arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.data_arrived.wait(), timeout)
        return None

    def _read_timeout(self, started: float, head) -> float:
        elapsed = time.monotonic() - started
        s = self.settings
        if head is not None:
            return s.head_timeout + s.body_timeout - elapsed
        if self.parser.buffered:
            return s.head_timeout - elapsed
        return s.keep_alive_timeout - elapsed

    async def _maybe_continue(self, head: h1.Head) -> bool:
        """RFC 9110 10.1.1: send 100 only when we will read the body; else refuse now."""
        self.continue_sent = True
        err = self.server.refusal_before_body(head)
        if err is not None:
            await self.refuse(HttpError(err.status, err.type, err.message, err.param, err.code,
                                        err.headers, close=True))
            return False
        await self.write(h1.CONTINUE_100)
        return True

    async def refuse(self, err: HttpError) -> None:
        """Answer a request we could not (fully) read, then the connection closes."""
        ex = Exchange(self, _NO_REQUEST)
        ex.keep_alive = False
        with contextlib.suppress(ClientGone):
            await ex.send_error(err)
        self.server.log_access(self, ex, 0.0)

    async def _handle(self, request: h1.Request) -> Exchange:
        self.continue_sent = False
        handler, param, route, err = self.server.route(request.head.method, request.head.path)
        ex = Exchange(self, request, param, route)
        self.in_flight = asyncio.create_task(self.server.run_handler(handler, err, ex))
        try:
            await self.in_flight
        except asyncio.CancelledError:
            if not self.eof:   # cancelled from outside, not by the client leaving
                raise
            ex.keep_alive = False
        finally:
            self.in_flight = None
            self.server.log_access(self, ex, time.monotonic() - ex.started)
        return ex


class Server:
    def __init__(self, app, routes: dict, settings: ServerSettings | None = None, *,
                 public_paths: frozenset[str] = frozenset(), metrics: Metrics | None = None) -> None:
        self.app = app
        self.routes = routes
        self.settings = settings or ServerSettings()
        self.public_paths = public_paths      # answered without an API key (unless auth_health)
        self.metrics = metrics or Metrics()
        self.closing = False
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    # ----- routing and request checks -----

    def route(self, method: str, path: str) -> tuple[Handler | None, str, str, HttpError | None]:
        """(handler, path parameter, route label, None), or the 404/405 error to answer."""
        candidates, param, label = {m: h for (m, p), h in self.routes.items() if p == path}, "", path
        if not candidates:
            for (m, p), h in self.routes.items():
                if p.endswith("/") and path.startswith(p) and len(path) > len(p):
                    candidates[m], param, label = h, path[len(p):], p + "{id}"
        if not candidates:
            return None, "", "other", HttpError(404, NOT_FOUND, f"no route for {path}",
                                                code="not_found")
        allowed = set(candidates) | ({"HEAD"} if "GET" in candidates else set())
        lookup = "GET" if method == "HEAD" else method
        if lookup in candidates:
            return candidates[lookup], param, label, None
        if method == "OPTIONS" and self.settings.cors_origins:
            return self._preflight, "", label, None
        return None, "", label, HttpError(
            405, "invalid_request_error", f"{method} is not allowed on {path}",
            code="method_not_allowed", headers=(("Allow", ", ".join(sorted(allowed))),))

    def refusal_before_body(self, head: h1.Head) -> HttpError | None:
        """What we would refuse a request for from its head alone (for 100-continue)."""
        _handler, _param, _label, err = self.route(head.method, head.path)
        return err or self._auth_error(head) or access.content_type_error(head)

    def _auth_error(self, head: h1.Head) -> HttpError | None:
        st = self.settings
        open_path = head.path in self.public_paths and not st.auth_health
        return None if open_path else access.auth_error(head, st.api_keys)

    def _cors_headers(self, ex: Exchange) -> None:
        ex.extra_headers += access.cors_headers(ex.request.head, self.settings.cors_origins)

    async def _preflight(self, _app, ex: Exchange) -> None:
        """CORS preflight (Fetch standard): which methods and headers a page may use here."""
        path = ex.request.head.path
        methods = sorted({m for (m, p), _h in self.routes.items()
                          if p == path or (p.endswith("/") and path.startswith(p))})
        allowed = any(h[0] == "Access-Control-Allow-Origin" for h in ex.extra_headers)
        await ex.send(204, b"", None, access.preflight_headers(methods) if allowed else [])

    async def run_handler(self, handler: Handler | None, err: HttpError | None, ex: Exchange) -> None:
        self._cors_headers(ex)
        try:
            if err is not None:
                raise err
            head = ex.request.head
            if (refusal := self._auth_error(head) or access.content_type_error(head)) is not None:
                raise refusal
            if self.closing:
                raise HttpError(503, UNAVAILABLE, "the server is shutting down", close=True)
            await handler(self.app, ex)
        except HttpError as exc:
            if ex.status is None:
                await ex.send_error(exc)
            else:   # already answering: nothing sane can follow on this connection
                ex.note_error(exc)
                ex.keep_alive = False
        except ClientGone:
            ex.keep_alive = False
        except asyncio.CancelledError:
            if not self.closing:
                raise
            await self._cut_short(ex)
        except Exception:
            log.exception("unhandled error on %s %s", ex.request.head.method, ex.request.head.path)
            if ex.status is None:
                await ex.send_error(HttpError(500, SERVER_ERROR, "internal server error", close=True))
            ex.keep_alive = False

    async def _cut_short(self, ex: Exchange) -> None:
        """Shutdown outlived the grace period: end the request with a clean, final error."""
        err = HttpError(503, UNAVAILABLE, "the server shut down before this request finished",
                        code="server_shutdown", close=True)
        ex.keep_alive = False
        with contextlib.suppress(ClientGone, asyncio.TimeoutError, ConnectionError):
            if ex.status is None:
                await asyncio.wait_for(ex.send_error(err), FINAL_WRITE_S)
            elif ex.streaming:
                ex.note_error(err)
                await asyncio.wait_for(ex.send_chunk(sse.event(err.to_json())), FINAL_WRITE_S)
                await asyncio.wait_for(ex.send_chunk(sse.DONE), FINAL_WRITE_S)
                await asyncio.wait_for(ex.end_stream(), FINAL_WRITE_S)

    # ----- life cycle -----

    async def _on_connect(self, reader, writer) -> None:
        conn = Connection(self, reader, writer)
        if len(self.connections) >= self.settings.max_connections or self.closing:
            await conn.refuse(HttpError(503, UNAVAILABLE, "too many open connections" if not
                                        self.closing else "the server is shutting down",
                                        headers=(("Retry-After", "1"),), close=True))
            writer.close()
            return
        self.connections.add(conn)
        try:
            await conn.serve()
        finally:
            self.connections.discard(conn)

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        self._server = await asyncio.start_server(self._on_connect, host, port,
                                                  reuse_address=True, backlog=1024)
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, let in-flight requests finish for ``grace_s``, then cancel them."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.data_arrived.set()   # wakes idle keep-alive loops so they see `closing`
        busy = [c.in_flight for c in self.connections if c.in_flight is not None]
        if busy:
            _done, pending = await asyncio.wait(busy, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def log_access(self, conn: Connection, ex: Exchange, seconds: float) -> None:
        head = ex.request.head
        prompt, completion = ex.tokens
        error = ex.error.type if ex.error is not None else None
        self.metrics.observe_request(head.method, ex.route, ex.status or 0, seconds, error)
        # The request id travels as a record attribute: logs.py prints it in both formats.
        access_log.info('%s "%s %s" %s %.3fs prompt=%d completion=%d%s', conn.peer,
                        head.method, head.target, ex.status or "-", seconds, prompt, completion,
                        f" error={error}" if error else "", extra={"request_id": ex.request_id})
