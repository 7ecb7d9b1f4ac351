"""Sans-IO HTTP/1.1 request parser: bytes in, ``Request`` records out, no sockets.

``mlxd.transport.server`` feeds what it reads and asks for the next request; ``None`` means "need
more bytes" (h11's shape, our code). Responses are rendered by ``mlxd.transport.h1_write``
(re-exported here). This module holds the per-connection state machine; a head's lines are
parsed in ``mlxd.transport.h1_head`` and a body is framed and read in ``mlxd.transport.h1_body``.

Every protocol error is an ``HttpError`` with ``close=True``: after one the byte stream cannot be
trusted, the parser is dead, and every later ``maybe_next_request`` re-raises that same error.

Strictness, chosen because our clients are SDKs and curl, never legacy agents:
- lines end in CRLF; a bare LF or bare CR anywhere in a head or chunk line is 400 (RFC 9112 2.2
  lets a recipient accept bare LF; two parsers that disagree on line ends are a smuggling vector);
- Content-Length is one field line of 1 to 18 digits; lists and repeats, even "5, 5", are 400;
- up to MAX_LEADING_EMPTY_LINES empty lines before a request line are skipped (RFC 9112 2.2);
- CONNECT is 501 (we are not a proxy); any other token is a method, for the router to judge;
- a Transfer-Encoding whose final coding is not chunked is 400 (RFC 9112 6.3); chunked last but
  after another coding is 501 (RFC 9112 6.1); chunked twice is 400;
- a request line or header section is checked as it arrives, so garbage, TLS and the HTTP/2
  preface fail on their first bytes and limits fail the moment they are crossed, not after.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.service.config import DEFAULT_MAX_BODY_BYTES
from mlxd.transport.errors import HttpError
from mlxd.transport.h1_body import (  # limits re-exported
    MAX_CHUNK_LINE_BYTES,
    MAX_TRAILER_BYTES,
    ChunkedBody,
    FixedBody,
    body_reader,
)
from mlxd.transport.h1_head import (  # Head and MAX_REQUEST_LINE_BYTES re-exported
    MAX_REQUEST_LINE_BYTES,
    SNIFF_BYTES,
    Head,
    build_head,
    fail,
    line_content,
    parse_field_line,
    parse_request_line,
    sniff_request_line,
)
from mlxd.transport.h1_write import (  # re-exported: the server imports all of HTTP from here
    CONTINUE_100,
    LAST_CHUNK,
    REASONS,
    render_chunk,
    render_head,
    render_response,
    render_stream_head,
)

__all__ = [
    "MAX_REQUEST_LINE_BYTES",
    "MAX_HEAD_BYTES",
    "MAX_HEADER_COUNT",
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_LEADING_EMPTY_LINES",
    "MAX_CHUNK_LINE_BYTES",
    "MAX_TRAILER_BYTES",
    "Head",
    "Request",
    "RequestParser",
    "render_response",
    "render_head",
    "render_stream_head",
    "render_chunk",
    "LAST_CHUNK",
    "CONTINUE_100",
    "REASONS",
]

# Limits: each names its unit, the status it raises, and why it is this size. Those of the
# request line live in h1_head, those of a body in h1_body; the public ones are re-exported here.
MAX_HEAD_BYTES = 16 * 1024  # 431; request line + field lines + CRLFs; h11's default
MAX_HEADER_COUNT = 100  # 431; an SDK sends about 15 field lines
# DEFAULT_MAX_BODY_BYTES (413) is a setting: mlxd/service/config.py has it, with its reason.
MAX_LEADING_EMPTY_LINES = 8  # 400; RFC 9112 2.2 asks us to skip at least one (old POST habits)


@dataclass(frozen=True)
class Request:
    head: Head
    body: bytes

    method = property(lambda self: self.head.method)
    target = property(lambda self: self.head.target)
    path = property(lambda self: self.head.path)
    query = property(lambda self: self.head.query)
    version = property(lambda self: self.head.version)
    headers = property(lambda self: self.head.headers)
    keep_alive = property(lambda self: self.head.keep_alive)
    expects_continue = property(lambda self: self.head.expects_continue)

    def header(self, name: str) -> str | None:
        return self.head.header(name)


class RequestParser:
    """Turns the bytes of one connection into ``Request`` records, in order.

    Call ``maybe_next_request`` until it returns None after each ``feed``. When it returns None
    the parser holds at most one unfinished request, bounded by the limits here, in h1_head and
    in h1_body (``buffered``).
    After ``feed_eof`` an unfinished request is dropped and ``maybe_next_request`` returns None.
    """

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        # Per-connection state
        self._max_body = max_body_bytes
        self._buf = bytearray()
        self._eof = False
        self._dead: HttpError | None = None
        self._new_request()

    def _new_request(self) -> None:
        # Per-request state
        self._request_line: tuple[str, str, str, str, str] | None = None
        self._fields: list[tuple[str, str]] = []
        self._head_bytes = 0  # head bytes taken off the buffer, CRLFs included
        self._leading = 0  # empty lines skipped before the request line
        self._scanned = 0  # self._buf[:self._scanned] holds no LF
        self._head: Head | None = None
        self._body: FixedBody | ChunkedBody | None = None

    def feed(self, data: bytes) -> None:
        """Append bytes; once the parser is dead they are dropped. After feed_eof: RuntimeError."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if self._dead is None:
            self._buf += data

    def feed_eof(self) -> None:
        """The peer closed: requests already complete still come out, then None for good."""
        self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes held: unparsed input, the head so far and the body so far."""
        return len(self._buf) + self._head_bytes + (self._body.held if self._body else 0)

    def maybe_pending_head(self) -> Head | None:
        """The head of a request whose body has not all arrived (as of the last
        ``maybe_next_request``), for 100-continue and early refusal; None otherwise."""
        return None if self._dead is not None or self._eof else self._head

    def maybe_next_request(self) -> Request | None:
        """The next complete request, or None for "need more bytes"; raises HttpError."""
        if self._dead is not None:
            raise self._dead
        try:
            request = self._maybe_step()
        except HttpError as error:
            self._dead = error
            self._buf.clear()
            self._new_request()
            raise
        if request is None and self._eof:
            self._buf.clear()
            self._new_request()
        return request

    def _maybe_step(self) -> Request | None:
        if self._head is None:
            self._head = self._maybe_read_head()
            if self._head is None:
                return None
        body = self._body.maybe_read(self._buf) if self._body else b""
        if body is None:
            return None
        request = Request(self._head, body)
        self._new_request()
        return request

    def _maybe_read_head(self) -> Head | None:
        while (line := self._maybe_take_line()) is not None:
            if self._request_line is None:
                self._on_first_line(line)
            elif line:
                self._on_field_line(line)
            else:
                fields = tuple(self._fields)
                self._body = body_reader(self._request_line[4], fields, self._max_body)
                return build_head(self._request_line, fields)
        return None

    def _line_bound(self) -> int:
        """The most bytes the next head line may take, LF included."""
        if self._request_line is None:
            return MAX_REQUEST_LINE_BYTES + 2
        return MAX_HEAD_BYTES - self._head_bytes

    def _maybe_take_line(self) -> bytes | None:
        """Take the next head line off the buffer, CRLF stripped; None until its LF arrives."""
        bound = self._line_bound()
        lf = self._buf.find(b"\n", self._scanned, bound)
        if lf < 0:
            self._scanned = min(len(self._buf), bound)
            self._check_partial_line(bound)
            return None
        raw = bytes(self._buf[: lf + 1])
        del self._buf[: lf + 1]
        self._scanned = 0
        if self._request_line is None:
            content = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            sniff_request_line(content[:SNIFF_BYTES], len(content))
        return line_content(raw)

    def _check_partial_line(self, bound: int) -> None:
        if self._request_line is not None:
            if len(self._buf) >= bound:  # the LF can no longer arrive in time
                raise fail(431, f"header section exceeds {MAX_HEAD_BYTES} bytes")
            return
        length = min(len(self._buf), bound)
        if self._buf[length - 1 : length] == b"\r":  # may be the CR of CRLF: not content yet
            length -= 1
        sniff_request_line(bytes(self._buf[: min(length, SNIFF_BYTES)]), length)

    def _on_first_line(self, line: bytes) -> None:
        if not line:  # RFC 9112 2.2: skip (a few) empty lines before the request line
            self._leading += 1
            if self._leading > MAX_LEADING_EMPTY_LINES:
                raise fail(400, "too many empty lines before the request line")
            return
        self._head_bytes = len(line) + 2
        self._request_line = parse_request_line(line)

    def _on_field_line(self, line: bytes) -> None:
        self._head_bytes += len(line) + 2
        if len(self._fields) >= MAX_HEADER_COUNT:
            raise fail(431, f"more than {MAX_HEADER_COUNT} header fields")
        self._fields.append(parse_field_line(line))
