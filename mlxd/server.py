"""The asyncio shell: accept, read, parse (http.py), route (api.ROUTES), write, drain, time out.

Everything protocol-shaped lives in http.py and sse.py, everything OpenAI-shaped in api.py; this
module only moves bytes and decides when a connection lives or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from typing import Awaitable, Callable

from . import __version__, http
from .errors import NOT_FOUND, SERVER_ERROR, UNAVAILABLE, HttpError

log = logging.getLogger("mlxd.server")
access_log = logging.getLogger("mlxd.access")

KEEP_ALIVE_TIMEOUT_S = 5.0     # idle time between requests on one connection (uvicorn's default)
HEAD_TIMEOUT_S = 10.0          # a whole request head must arrive within this (slowloris)
BODY_TIMEOUT_S = 30.0          # a whole body must arrive within this once the head is in
SEND_TIMEOUT_S = 60.0          # a client that reads nothing for this long is gone
MAX_CONNECTIONS = 1024         # past this, new connections get a 503 and are closed
READ_CHUNK_BYTES = 64 * 1024
JSON_TYPE = "application/json; charset=utf-8"
SERVER_HEADER = ("Server", f"mlxd/{__version__}")

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


class Exchange:
    """One request and the means to answer it, once (a JSON body or a chunked stream)."""

    def __init__(self, conn: "Connection", request: http.Request, path_param: str = "") -> None:
        self.conn = conn
        self.request = request
        self.path_param = path_param
        self.head_only = request.head.method == "HEAD"
        self.keep_alive = request.head.keep_alive
        # Per-request state, for the access log.
        self.status: int | None = None
        self.streaming = False
        self.tokens = (0, 0)
        self.error: HttpError | None = None

    def note_tokens(self, prompt: int, completion: int) -> None:
        self.tokens = (prompt, completion)

    def note_error(self, err: HttpError) -> None:
        self.error = err

    def _headers(self, content_type: str, extra=()) -> list[tuple[str, str]]:
        headers = [("Date", _http_date()), SERVER_HEADER, ("Content-Type", content_type)]
        headers.extend(extra)
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        return headers

    async def send(self, status: int, body: bytes, content_type: str, headers=()) -> None:
        self.status = status
        await self.conn.write(http.render_response(status, self._headers(content_type, headers),
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
            head = http.render_head(200, self._headers(content_type, extra))
        else:
            head = http.render_stream_head(200, self._headers(content_type, extra))
        await self.conn.write(head)

    async def send_chunk(self, data: bytes) -> None:
        if self.head_only:
            return
        chunked = self.request.head.version != "HTTP/1.0"
        await self.conn.write(http.render_chunk(data) if chunked else data)

    async def end_stream(self) -> None:
        if self.request.head.version != "HTTP/1.0" and not self.head_only:
            await self.conn.write(http.LAST_CHUNK)


class Connection:
    """One client socket: a pump task reads into the parser; the main loop answers requests."""

    def __init__(self, server: "Server", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        # Per-connection state.
        self.parser = http.RequestParser(max_body_bytes=server.max_body_bytes)
        self.data_arrived = asyncio.Event()
        self.eof = False
        self.in_flight: asyncio.Task | None = None
        self.idle = True

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ClientGone()
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), SEND_TIMEOUT_S)
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
                if ex is None or not ex.keep_alive:
                    break
        except ClientGone:
            pass
        finally:
            pump.cancel()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def _next_request(self) -> http.Request | None:
        """The next complete request, or None when the connection should close."""
        started = time.monotonic()
        while True:
            try:
                request = self.parser.maybe_next_request()
            except HttpError as err:
                await self._refuse(err)
                return None
            if request is not None:
                return request
            if self.eof:
                return None
            head = self.parser.maybe_pending_head()
            if head is not None and head.expects_continue and not getattr(self, "_continued", False):
                if not await self._maybe_continue(head):
                    return None
            timeout = self._read_timeout(started, head)
            if timeout <= 0:
                if self.parser.buffered or head is not None:
                    await self._refuse(HttpError(408, "invalid_request_error",
                                                 "request timed out", close=True))
                return None
            self.data_arrived.clear()
            try:
                await asyncio.wait_for(self.data_arrived.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _read_timeout(self, started: float, head) -> float:
        elapsed = time.monotonic() - started
        if head is not None:
            return HEAD_TIMEOUT_S + BODY_TIMEOUT_S - elapsed
        if self.parser.buffered:
            return HEAD_TIMEOUT_S - elapsed
        return KEEP_ALIVE_TIMEOUT_S - elapsed

    async def _maybe_continue(self, head) -> bool:
        """RFC 9110 10.1.1: send 100 only when we will read the body; else refuse now."""
        self._continued = True
        handler, _param, err = self.server.route(head.method, head.path)
        if err is not None:
            await self._refuse(HttpError(err.status, err.type, err.message, headers=err.headers,
                                         close=True))
            return False
        await self.write(http.CONTINUE_100)
        return True

    async def _refuse(self, err: HttpError) -> None:
        fake = http.Request(head=http.Head("-", "-", "-", "", "HTTP/1.1", (), False, False), body=b"")
        ex = Exchange(self, fake)
        ex.keep_alive = False
        with contextlib.suppress(ClientGone):
            await ex.send_error(err)
        self.server.log_access(self, ex, 0.0)

    async def _handle(self, request: http.Request) -> Exchange | None:
        self._continued = False
        handler, param, err = self.server.route(request.head.method, request.head.path)
        ex = Exchange(self, request, param)
        started = time.perf_counter()
        self.in_flight = asyncio.create_task(self.server.run_handler(handler, err, ex))
        try:
            await self.in_flight
        except asyncio.CancelledError:
            if not self.eof:   # cancelled from outside (shutdown), not by the client leaving
                raise
            ex.keep_alive = False
        finally:
            self.in_flight = None
            self.server.log_access(self, ex, time.perf_counter() - started)
        return ex


class Server:
    def __init__(self, app, routes: dict, *, max_body_bytes: int = http.DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes
        self.closing = False
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    # ----- routing -----

    def route(self, method: str, path: str) -> tuple[Handler | None, str, HttpError | None]:
        """The handler and path parameter for a request, or the 404/405 error to answer."""
        candidates = {m: h for (m, p), h in self.routes.items() if p == path}
        param = ""
        if not candidates:
            for (m, p), h in self.routes.items():
                if p.endswith("/") and path.startswith(p) and len(path) > len(p):
                    candidates[m], param = h, path[len(p):]
        if not candidates:
            return None, "", HttpError(404, NOT_FOUND, f"no route for {path}", code="not_found")
        lookup = "GET" if method == "HEAD" else method
        if lookup in candidates:
            return candidates[lookup], param, None
        allowed = sorted(set(candidates) | ({"HEAD"} if "GET" in candidates else set()))
        return None, "", HttpError(405, "invalid_request_error",
                                   f"{method} is not allowed on {path}", code="method_not_allowed",
                                   headers=(("Allow", ", ".join(allowed)),))

    async def run_handler(self, handler: Handler | None, err: HttpError | None, ex: Exchange) -> None:
        try:
            if err is not None:
                raise err
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
        except Exception:
            log.exception("unhandled error on %s %s", ex.request.head.method, ex.request.head.path)
            if ex.status is None:
                await ex.send_error(HttpError(500, SERVER_ERROR, "internal server error", close=True))
            ex.keep_alive = False

    # ----- life cycle -----

    async def _on_connect(self, reader, writer) -> None:
        conn = Connection(self, reader, writer)
        if len(self.connections) >= MAX_CONNECTIONS:
            await conn._refuse(HttpError(503, UNAVAILABLE, "too many open connections",
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
        busy = [c.in_flight for c in self.connections if c.in_flight is not None]
        for conn in list(self.connections):
            if conn.in_flight is None:
                conn.data_arrived.set()   # wakes idle keep-alive loops so they see `closing`
        if busy:
            done, pending = await asyncio.wait(busy, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def log_access(self, conn: Connection, ex: Exchange, seconds: float) -> None:
        head = ex.request.head
        prompt, completion = ex.tokens
        extra = f" error={ex.error.type}" if ex.error is not None else ""
        access_log.info('%s "%s %s" %s %.3fs prompt=%d completion=%d%s', conn.peer, head.method,
                        head.target, ex.status or "-", seconds, prompt, completion, extra)
