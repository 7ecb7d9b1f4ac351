"""Sans-IO HTTP/1.1 request parser: bytes in, ``Request`` records out, no sockets.

``server.py`` feeds what it reads and asks for the next request; ``None`` means "need more bytes"
(h11's shape, our code). Responses are rendered by ``mlxd.http_write`` (re-exported here).

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

import re
from dataclasses import dataclass

from mlxd.transport.errors import INVALID_REQUEST, HttpError
from mlxd.transport.h1_write import (  # re-exported: the server imports all of HTTP from here
    CONTINUE_100, LAST_CHUNK, REASONS, render_chunk, render_head, render_response,
    render_stream_head)

__all__ = [
    "MAX_REQUEST_LINE_BYTES", "MAX_HEAD_BYTES", "MAX_HEADER_COUNT", "DEFAULT_MAX_BODY_BYTES",
    "MAX_LEADING_EMPTY_LINES", "MAX_CHUNK_LINE_BYTES", "MAX_TRAILER_BYTES", "Head", "Request",
    "RequestParser", "render_response", "render_head", "render_stream_head", "render_chunk",
    "LAST_CHUNK", "CONTINUE_100", "REASONS"]

# Limits: each names its unit, the status it raises, and why it is this size.
MAX_REQUEST_LINE_BYTES = 8 * 1024  # 414; RFC 9112 3 recommends at least 8000 octets; CRLF excluded
MAX_HEAD_BYTES = 16 * 1024  # 431; request line + field lines + CRLFs; h11's default
MAX_HEADER_COUNT = 100  # 431; an SDK sends about 15 field lines
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # 413; a long chat history is well under 1 MiB
MAX_LEADING_EMPTY_LINES = 8  # 400; RFC 9112 2.2 asks us to skip at least one (old POST habits)
MAX_CHUNK_LINE_BYTES = 1024  # 400; chunk-size plus extensions, which we ignore; CRLF excluded
MAX_TRAILER_BYTES = 4 * 1024  # 431; trailer fields are read and dropped; CRLFs included
MAX_CONTENT_LENGTH_DIGITS = 18  # 400; 10**18 bytes is no real body, and int() stays cheap
MAX_CHUNK_SIZE_DIGITS = 16  # 400; 16 hex digits already span 2**64
SNIFF_BYTES = 64  # bytes of a request line checked before its CRLF arrives (TLS, garbage)

HTTP2_PREFACE_START = b"PRI * HTTP/2"  # RFC 9113 3.4; a request line would be 505, this is 400

# RFC 9110 5.6.2: token = 1*tchar.
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN_RE = re.compile(_TCHAR + b"+")
_TCHARS_RE = re.compile(_TCHAR + b"*")
# RFC 9110 5.5: field-value is field-vchar / SP / HTAB; NUL, CR, LF and other CTLs are rejected.
_FIELD_VALUE_RE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
# RFC 3986 3.3 / 3.4: pchar, path and query; percent-escapes must be well formed.
_PCHAR = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})"
_QUERY = rb"(?:\?((?:" + _PCHAR + rb"|[/?])*))?"
_REG_NAME = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})"
_PORT = rb"(?::[0-9]*)?"
_IP_LITERAL = rb"\[[0-9A-Fa-f:.]+\]"
# RFC 9112 3.2.1 origin-form and 3.2.2 absolute-form (http/https only; userinfo is refused,
# RFC 9110 4.2.4; an empty host is invalid, RFC 9110 4.2.1).
_ORIGIN_FORM_RE = re.compile(rb"(/(?:" + _PCHAR + rb"|/)*)" + _QUERY)
_ABSOLUTE_FORM_RE = re.compile(
    rb"(?i:https?)://(?:" + _IP_LITERAL + b"|" + _REG_NAME + b"+)" + _PORT
    + rb"((?:/" + _PCHAR + rb"*)*)" + _QUERY)
# RFC 9110 7.2: Host = uri-host [ ":" port ]; uri-host may be empty.
_HOST_VALUE_RE = re.compile(rb"(?:" + _IP_LITERAL + b"|" + _REG_NAME + b"*)" + _PORT)
_VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")
# Any other HTTP/x.y is 505, HTTP/1.2 included (RFC 9110 2.5 would let us read it as 1.1).
_SUPPORTED_VERSIONS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}
_CHUNK_LINE_RE = re.compile(rb"([0-9A-Fa-f]+)(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_HEX_RE = re.compile(rb"[0-9A-Fa-f]*")
_DIGITS_RE = re.compile(r"[0-9]+")


def _fail(status: int, message: str) -> HttpError:
    return HttpError(status, INVALID_REQUEST, message, close=True)


@dataclass(frozen=True)
class Head:
    """A parsed request head; its body may still be arriving."""

    method: str  # case-sensitive token
    target: str  # the raw request-target
    path: str  # not percent-decoded; the URL's path for absolute-form; "*" for asterisk-form
    query: str  # after "?", or ""
    version: str  # "HTTP/1.1" or "HTTP/1.0"
    headers: tuple[tuple[str, str], ...]  # names lower-cased, values without OWS, in order
    keep_alive: bool
    expects_continue: bool

    def header(self, name: str) -> str | None:
        """The first value of field ``name`` (any case), or None."""
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)


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
    the parser holds at most one unfinished request, bounded by the limits above (``buffered``).
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
        self._body: _FixedBody | _ChunkedBody | None = None

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
                self._body = _body_reader(self._request_line[4], fields, self._max_body)
                return _build_head(self._request_line, fields)
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
            _sniff_request_line(content[:SNIFF_BYTES], len(content))
        return _line_content(raw)

    def _check_partial_line(self, bound: int) -> None:
        if self._request_line is not None:
            if len(self._buf) >= bound:  # the LF can no longer arrive in time
                raise _fail(431, f"header section exceeds {MAX_HEAD_BYTES} bytes")
            return
        length = min(len(self._buf), bound)
        if self._buf[length - 1 : length] == b"\r":  # may be the CR of CRLF: not content yet
            length -= 1
        _sniff_request_line(bytes(self._buf[: min(length, SNIFF_BYTES)]), length)

    def _on_first_line(self, line: bytes) -> None:
        if not line:  # RFC 9112 2.2: skip (a few) empty lines before the request line
            self._leading += 1
            if self._leading > MAX_LEADING_EMPTY_LINES:
                raise _fail(400, "too many empty lines before the request line")
            return
        self._head_bytes = len(line) + 2
        self._request_line = _parse_request_line(line)

    def _on_field_line(self, line: bytes) -> None:
        self._head_bytes += len(line) + 2
        if len(self._fields) >= MAX_HEADER_COUNT:
            raise _fail(431, f"more than {MAX_HEADER_COUNT} header fields")
        self._fields.append(_parse_field_line(line))


def _sniff_request_line(sniff: bytes, length: int) -> None:
    """Reject a request line, whole or the start of one, as early as its bytes allow.

    ``sniff`` is its first SNIFF_BYTES of content, ``length`` its content length so far. Faults
    are checked in the order of the byte that reveals them, so feeding a line whole or a byte at
    a time raises the same status.
    """
    method_end = _TCHARS_RE.match(sniff).end()
    if method_end < len(sniff) and (method_end == 0 or sniff[method_end] != 0x20):
        if sniff[:1] == b"\x16":
            raise _fail(400, "TLS handshake on a plain-HTTP port; use http://, not https://")
        raise _fail(400, "request line does not start with a method token")
    if sniff.startswith(HTTP2_PREFACE_START):
        raise _fail(400, "HTTP/2 connection preface; this server speaks HTTP/1.1")
    if length > MAX_REQUEST_LINE_BYTES:
        raise _fail(414, f"request line exceeds {MAX_REQUEST_LINE_BYTES} bytes")


def _line_content(raw: bytes) -> bytes:
    """A line without its CRLF; RFC 9112 2.2: bare LF and bare CR are rejected here."""
    if not raw.endswith(b"\r\n"):
        raise _fail(400, "line ends in a bare LF; CRLF required")
    content = raw[:-2]
    if b"\r" in content:
        raise _fail(400, "bare CR inside a line")
    return content


def _parse_request_line(line: bytes) -> tuple[str, str, str, str, str]:
    """RFC 9112 3: method SP request-target SP HTTP-version, one SP each."""
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise _fail(400, "request line is not 'method SP target SP version'")
    method, target, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise _fail(400, "method is not a token")
    if not _VERSION_RE.fullmatch(version):
        raise _fail(400, "malformed HTTP version")
    if version not in _SUPPORTED_VERSIONS:
        raise _fail(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if method == b"CONNECT":
        raise _fail(501, "CONNECT is not supported; this is not a proxy")
    path, query = _split_target(method, target)
    return (method.decode("ascii"), target.decode("ascii"), path, query,
            _SUPPORTED_VERSIONS[version])


def _split_target(method: bytes, target: bytes) -> tuple[str, str]:
    """(path, query) of an origin-, absolute- or asterisk-form target (RFC 9112 3.2)."""
    if target == b"*":
        if method != b"OPTIONS":
            raise _fail(400, "asterisk-form target is only for OPTIONS")
        return "*", ""
    for form in (_ORIGIN_FORM_RE, _ABSOLUTE_FORM_RE):
        if match := form.fullmatch(target):
            return (match[1] or b"/").decode("ascii"), (match[2] or b"").decode("ascii")
    raise _fail(400, "request-target is not origin-form or absolute-form")


def _parse_field_line(line: bytes) -> tuple[str, str]:
    """RFC 9112 5: field-name ":" OWS field-value OWS."""
    if line[:1] in (b" ", b"\t"):  # RFC 9112 5.2 obs-fold, or 2.2 space after the start line
        raise _fail(400, "field line starts with whitespace (obsolete line folding)")
    name, colon, value = line.partition(b":")
    if not colon:
        raise _fail(400, "field line without a colon")
    if not _TOKEN_RE.fullmatch(name):
        if name.endswith((b" ", b"\t")):  # RFC 9112 5.1: MUST reject
            raise _fail(400, "whitespace between field name and colon")
        raise _fail(400, "field name is not a token")
    value = value.strip(b" \t")
    if not _FIELD_VALUE_RE.fullmatch(value):
        raise _fail(400, f"control character in the value of {name.decode('ascii')}")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _values(fields: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [value for key, value in fields if key == name]


def _members(fields: tuple[tuple[str, str], ...], name: str) -> list[str]:
    """RFC 9110 5.6.1: the members of a comma list over all lines of ``name``, lower-cased,
    without OWS; empty members are ignored."""
    members = [m.strip(" \t") for value in _values(fields, name) for m in value.split(",")]
    return [m.lower() for m in members if m]


def _tokens(fields: tuple[tuple[str, str], ...], name: str) -> list[str]:
    """``_members`` of a list whose members are tokens (Connection, Transfer-Encoding)."""
    members = _members(fields, name)
    for member in members:
        if not _TOKEN_RE.fullmatch(member.encode("latin-1")):
            raise _fail(400, f"{name} member {member!r} is not a token")
    return members


def _build_head(request_line: tuple[str, str, str, str, str],
                fields: tuple[tuple[str, str], ...]) -> Head:
    method, target, path, query, version = request_line
    _check_host(version, fields)
    options = _tokens(fields, "connection")  # RFC 9110 7.6.1
    keep_alive = "close" not in options and (version == "HTTP/1.1" or "keep-alive" in options)
    return Head(method, target, path, query, version, fields, keep_alive,
                _expects_continue(version, fields))


def _check_host(version: str, fields: tuple[tuple[str, str], ...]) -> None:
    """RFC 9112 3.2: a 1.1 request has exactly one Host; no request has two."""
    hosts = _values(fields, "host")
    if len(hosts) > 1:
        raise _fail(400, "more than one Host header field")
    if not hosts and version == "HTTP/1.1":
        raise _fail(400, "HTTP/1.1 request without a Host header field")
    if hosts and not _HOST_VALUE_RE.fullmatch(hosts[0].encode("latin-1")):
        raise _fail(400, "invalid Host header field")


def _expects_continue(version: str, fields: tuple[tuple[str, str], ...]) -> bool:
    """RFC 9110 10.1.1: 100-continue is the only expectation; it is ignored in HTTP/1.0."""
    members = _members(fields, "expect")
    if any(m != "100-continue" for m in members):
        raise _fail(417, "the only supported expectation is 100-continue")
    return bool(members) and version == "HTTP/1.1"


def _body_reader(version: str, fields: tuple[tuple[str, str], ...],
                 max_body: int) -> _FixedBody | _ChunkedBody | None:
    """How the body ends (RFC 9112 6.1, 6.3), checked before anything else in the head;
    None for no body. 413 is raised here, from the head alone."""
    lengths = _values(fields, "content-length")
    if _values(fields, "transfer-encoding"):
        if version == "HTTP/1.0":
            raise _fail(400, "Transfer-Encoding in an HTTP/1.0 request")
        if lengths:
            raise _fail(400, "both Transfer-Encoding and Content-Length (a smuggling vector)")
        _check_codings(_tokens(fields, "transfer-encoding"))
        return _ChunkedBody(max_body)
    if not lengths:
        return None  # RFC 9112 6.3 rule 6: a request without framing has no body
    if len(lengths) > 1:
        raise _fail(400, "more than one Content-Length field line")
    if not _DIGITS_RE.fullmatch(lengths[0]):
        raise _fail(400, "Content-Length is not a string of digits")
    if len(lengths[0]) > MAX_CONTENT_LENGTH_DIGITS:
        raise _fail(400, "Content-Length overflows")
    if int(lengths[0]) > max_body:
        raise _fail(413, f"request body exceeds {max_body} bytes")
    return _FixedBody(int(lengths[0])) if int(lengths[0]) else None


def _check_codings(codings: list[str]) -> None:
    if not codings or codings[-1] != "chunked":
        raise _fail(400, "chunked is not the final transfer coding")
    if codings.count("chunked") > 1:
        raise _fail(400, "chunked applied more than once")
    if len(codings) > 1:
        raise _fail(501, f"transfer coding {codings[0]!r} is not supported")


class _FixedBody:
    """A Content-Length body, taken off the buffer as it arrives."""

    def __init__(self, length: int) -> None:
        self._length = length
        self._body = bytearray()

    @property
    def held(self) -> int:
        return len(self._body)

    def maybe_read(self, buf: bytearray) -> bytes | None:
        take = self._length - len(self._body)
        self._body += buf[:take]
        del buf[:take]
        return bytes(self._body) if len(self._body) == self._length else None


class _ChunkedBody:
    """RFC 9112 7.1: chunk-size [ext] CRLF data CRLF ... 0 [ext] CRLF trailers CRLF."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._body = bytearray()
        self._step = _ChunkedBody._size_line
        self._left = 0  # data bytes left in the current chunk
        self._trailer_bytes = 0
        self._done = False

    @property
    def held(self) -> int:
        return len(self._body) + self._trailer_bytes

    def maybe_read(self, buf: bytearray) -> bytes | None:
        while not self._done:
            if not self._step(self, buf):
                return None
        return bytes(self._body)

    def _size_line(self, buf: bytearray) -> bool:
        lf = buf.find(b"\n", 0, MAX_CHUNK_LINE_BYTES + 2)
        if lf < 0:
            _sniff_chunk_line(buf)
            return False
        line = _line_content(bytes(buf[: lf + 1]))
        del buf[: lf + 1]
        match = _CHUNK_LINE_RE.fullmatch(line)
        if not match:
            raise _fail(400, "malformed chunk-size line")
        if len(match[1]) > MAX_CHUNK_SIZE_DIGITS:
            raise _fail(400, "chunk size overflows")
        self._left = int(match[1], 16)
        if len(self._body) + self._left > self._max_body:
            raise _fail(413, f"request body exceeds {self._max_body} bytes")
        self._step = _ChunkedBody._data if self._left else _ChunkedBody._trailer_line
        return True

    def _data(self, buf: bytearray) -> bool:
        if not buf:
            return False
        take = min(len(buf), self._left)
        self._body += buf[:take]
        del buf[:take]
        self._left -= take
        if not self._left:
            self._step = _ChunkedBody._data_end
        return True

    def _data_end(self, buf: bytearray) -> bool:
        if not b"\r\n".startswith(buf[:2]):
            raise _fail(400, "chunk data not followed by CRLF")
        if len(buf) < 2:
            return False
        del buf[:2]
        self._step = _ChunkedBody._size_line
        return True

    def _trailer_line(self, buf: bytearray) -> bool:
        bound = MAX_TRAILER_BYTES - self._trailer_bytes
        lf = buf.find(b"\n", 0, bound)
        if lf < 0:
            if len(buf) >= bound:
                raise _fail(431, f"trailer section exceeds {MAX_TRAILER_BYTES} bytes")
            return False
        line = _line_content(bytes(buf[: lf + 1]))
        del buf[: lf + 1]
        self._trailer_bytes += lf + 1
        if line:
            _parse_field_line(line)  # validated, then dropped: nothing here needs trailers
        else:
            self._done = True
        return True


def _sniff_chunk_line(buf: bytearray) -> None:
    """Reject the start of a chunk-size line early: hex digits, then ";" or the CRLF."""
    partial = bytes(buf[: MAX_CHUNK_LINE_BYTES + 2])
    if partial.endswith(b"\r"):  # may be the CR of CRLF
        partial = partial[:-1]
    digits = _HEX_RE.match(partial).end()
    if digits < len(partial) and (digits == 0 or partial[digits] != 0x3B):
        raise _fail(400, "malformed chunk-size line")
    if len(partial) > MAX_CHUNK_LINE_BYTES:
        raise _fail(400, f"chunk-size line exceeds {MAX_CHUNK_LINE_BYTES} bytes")
