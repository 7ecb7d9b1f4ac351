"""The asyncio shell: accept, read, parse, route, write, drain, time out.

Parsing and rendering HTTP live in mlxd/transport/h1.py, server-sent events in
mlxd/transport/sse.py, answering one request in mlxd/transport/exchange.py, the route lookup in
mlxd/transport/routing.py, and everything OpenAI-shaped in mlxd/api/ (whose routes.py ROUTES this
server is given); this module only moves bytes and decides when a connection lives or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

from mlxd.transport import access, h1, routing
from mlxd.transport.errors import OPENAI_STYLE, SERVER_ERROR, UNAVAILABLE, ErrorStyle, HttpError
from mlxd.transport.exchange import NO_REQUEST, ClientGone, Exchange
from mlxd.transport.metrics import Metrics
from mlxd.transport.routing import Handler, Routed

log = logging.getLogger(__name__)
access_log = logging.getLogger("mlxd.access")

READ_CHUNK_BYTES = 64 * 1024
ADMIN_PREFIX = "/admin/"  # routes that take --admin-key when one is set
FINAL_WRITE_S = 1.0  # a last error to a client during shutdown may take this long


@dataclass(frozen=True)
class ServerSettings:
    max_body_bytes: int = h1.DEFAULT_MAX_BODY_BYTES
    max_connections: int = 1024  # past this, new connections get a 503 and are closed
    keep_alive_timeout: float = 5.0  # idle time between requests on one connection (uvicorn's)
    head_timeout: float = 10.0  # a whole request head must arrive within this (slowloris)
    body_timeout: float = 30.0  # a whole body must arrive within this once the head is in
    send_timeout: float = 60.0  # a client that reads nothing for this long is gone
    api_keys: tuple[str, ...] = ()
    admin_keys: tuple[str, ...] = ()  # the keys of ADMIN_PREFIX routes; empty: the API keys
    auth_health: bool = False  # /health and /metrics need the key too
    cors_origins: tuple[str, ...] = ()


class Connection:
    """One client socket: a pump task reads into the parser; the main loop answers requests."""

    def __init__(
        self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.settings = server.settings
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer) or "unix"
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
            return  # all handed to the kernel: nothing to wait for (and no task to make)
        try:
            # Backpressure: a slow reader waits here, alone; other connections keep going.
            await asyncio.wait_for(self.writer.drain(), self.settings.send_timeout)
        except (ConnectionError, TimeoutError) as exc:
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
        if self.in_flight is not None:  # the client left mid-request: stop its work
            self.in_flight.cancel()

    async def handle_requests(self) -> None:
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
                    await self.refuse(
                        HttpError(408, "invalid_request_error", "request timed out", close=True)
                    )
                return None
            self.data_arrived.clear()
            with contextlib.suppress(TimeoutError):
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
            await self.refuse(
                HttpError(
                    err.status, err.type, err.message, err.param, err.code, err.headers, close=True
                ),
                self.server.route(head.method, head.path).errors,
            )
            return False
        await self.write(h1.CONTINUE_100)
        return True

    async def refuse(self, err: HttpError, errors: ErrorStyle = OPENAI_STYLE) -> None:
        """Answer a request we could not (fully) read, then the connection closes."""
        ex = Exchange(self, NO_REQUEST, errors=errors)
        ex.keep_alive = False
        with contextlib.suppress(ClientGone):
            await ex.send_error(err)
        self.server.log_access(self, ex, 0.0)

    async def _handle(self, request: h1.Request) -> Exchange:
        self.continue_sent = False
        handler, param, route, err, errors = self.server.route(
            request.head.method, request.head.path
        )
        ex = Exchange(self, request, param, route, errors)
        self.in_flight = asyncio.create_task(self.server.run_handler(handler, err, ex))
        try:
            await self.in_flight
        except asyncio.CancelledError:
            if not self.eof:  # cancelled from outside, not by the client leaving
                raise
            ex.keep_alive = False
        finally:
            self.in_flight = None
            self.server.log_access(self, ex, time.monotonic() - ex.started)
        return ex


class Server:
    def __init__(
        self,
        app,
        routes: routing.Routes,
        settings: ServerSettings | None = None,
        *,
        public_paths: frozenset[str] = frozenset(),
        quiet_paths: frozenset[str] = frozenset(),
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.routes = routes
        self.settings = settings or ServerSettings()
        self.public_paths = public_paths  # answered without an API key (unless auth_health)
        self.quiet_paths = quiet_paths  # access-logged at DEBUG (probes, scrapes)
        self.metrics = metrics or Metrics()
        self.closing = False
        self.connections: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    # ----- routing and request checks -----

    def route(self, method: str, path: str) -> Routed:
        """(handler, path parameter, route label, None), or the 404/405 error to answer."""
        preflight = self._preflight if self.settings.cors_origins else None
        return routing.route(self.routes, method, path, preflight=preflight)

    def refusal_before_body(self, head: h1.Head) -> HttpError | None:
        """What we would refuse a request for from its head alone (for 100-continue)."""
        err = self.route(head.method, head.path).error
        return err or self._auth_error(head) or access.content_type_error(head)

    def _auth_error(self, head: h1.Head) -> HttpError | None:
        st = self.settings
        open_path = head.path in self.public_paths and not st.auth_health
        admin = st.admin_keys and head.path.startswith(ADMIN_PREFIX)
        return (
            None if open_path else access.auth_error(head, st.admin_keys if admin else st.api_keys)
        )

    def _cors_headers(self, ex: Exchange) -> None:
        ex.extra_headers += access.cors_headers(ex.request.head, self.settings.cors_origins)

    async def _preflight(self, _app, ex: Exchange) -> None:
        """CORS preflight (Fetch standard): which methods and headers a page may use here."""
        methods = routing.methods_for(self.routes, ex.request.head.path)
        allowed = any(h[0] == "Access-Control-Allow-Origin" for h in ex.extra_headers)
        await ex.send(204, b"", None, access.preflight_headers(methods) if allowed else [])

    async def run_handler(
        self, handler: Handler | None, err: HttpError | None, ex: Exchange
    ) -> None:
        self._cors_headers(ex)
        try:
            if err is not None:
                raise err
            head = ex.request.head
            if (refusal := self._auth_error(head) or access.content_type_error(head)) is not None:
                raise refusal
            if self.closing:
                raise HttpError(503, UNAVAILABLE, "the server is shutting down", close=True)
            assert handler is not None  # route() gives a handler or an error
            await handler(self.app, ex)
        except HttpError as exc:
            if ex.status is None:
                await ex.send_error(exc)
            else:  # already answering: nothing sane can follow on this connection
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
                await ex.send_error(
                    HttpError(500, SERVER_ERROR, "internal server error", close=True)
                )
            ex.keep_alive = False

    async def _cut_short(self, ex: Exchange) -> None:
        """Shutdown outlived the grace period: end the request with a clean, final error."""
        err = HttpError(
            503,
            UNAVAILABLE,
            "the server shut down before this request finished",
            code="server_shutdown",
            close=True,
        )
        ex.keep_alive = False
        with contextlib.suppress(ClientGone, TimeoutError, ConnectionError):
            if ex.status is None:
                await asyncio.wait_for(ex.send_error(err), FINAL_WRITE_S)
            elif ex.streaming:
                ex.note_error(err)
                await asyncio.wait_for(ex.send_chunk(ex.errors.stream_end(err)), FINAL_WRITE_S)
                await asyncio.wait_for(ex.end_stream(), FINAL_WRITE_S)

    # ----- life cycle -----

    async def _on_connect(self, reader, writer) -> None:
        conn = Connection(self, reader, writer)
        if len(self.connections) >= self.settings.max_connections or self.closing:
            await conn.refuse(
                HttpError(
                    503,
                    UNAVAILABLE,
                    "too many open connections"
                    if not self.closing
                    else "the server is shutting down",
                    headers=(("Retry-After", "1"),),
                    close=True,
                )
            )
            writer.close()
            return
        self.connections.add(conn)
        try:
            await conn.handle_requests()
        finally:
            self.connections.discard(conn)

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        self._server = await asyncio.start_server(
            self._on_connect, host, port, reuse_address=True, backlog=1024
        )
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def start_unix(self, path: str) -> list[tuple[str, int]]:
        """Listen on a Unix socket (a --models worker: only its front end connects)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by a process that was killed
        self._server = await asyncio.start_unix_server(self._on_connect, path, backlog=1024)
        return [(path, 0)]

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting, let in-flight requests finish for ``grace_s``, then cancel them."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.data_arrived.set()  # wakes idle keep-alive loops so they see `closing`
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
        # The request id travels as a record attribute: mlxd/service/logs.py prints it in both
        # formats.
        access_log.log(
            logging.DEBUG if head.path in self.quiet_paths else logging.INFO,
            '%s "%s %s" %s %.3fs prompt=%d completion=%d%s',
            conn.peer,
            head.method,
            head.target,
            ex.status or "-",
            seconds,
            prompt,
            completion,
            f" error={error}" if error else "",
            extra={"request_id": ex.request_id},
        )
