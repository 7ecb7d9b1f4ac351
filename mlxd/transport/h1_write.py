"""Sans-IO HTTP/1.1 response writer: status, fields and body in, bytes out.

The caller adds Date, Server and Content-Type; framing (Content-Length or chunked) is ours, so a
caller that passes Content-Length or Transfer-Encoding gets a ValueError. Field names and values
are checked here because a CR or LF in a value would let a caller's data split the response.
Chunked streaming is HTTP/1.1 only (RFC 9112 7.1): stream to an HTTP/1.0 client after a
``render_head`` (no framing) and close the connection at the end instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# RFC 9110 15: the reason phrases of the statuses we may send.
REASONS: dict[int, str] = {
    100: "Continue",
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    417: "Expectation Failed",
    422: "Unprocessable Content",
    429: "Too Many Requests",  # RFC 6585 4
    431: "Request Header Fields Too Large",  # RFC 6585 5
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

LAST_CHUNK = b"0\r\n\r\n"  # RFC 9112 7.1: last-chunk, no trailers, end of the chunked body
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"  # RFC 9110 10.1.1

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
_FIELD_VALUE_RE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")  # RFC 9110 5.5: no CTL but HTAB
_FRAMING_FIELDS = frozenset({"content-length", "transfer-encoding"})


def _has_no_content(status: int) -> bool:
    """RFC 9110 6.4.1 / 8.6: 1xx, 204 and 304 carry no content and no Content-Length."""
    return status < 200 or status in (204, 304)


def render_response(
    status: int, headers: Sequence[tuple[str, str]], body: bytes = b"", *, head_only: bool = False
) -> bytes:
    """A whole response with a computed Content-Length.

    ``head_only`` answers HEAD: Content-Length is that of ``body`` (what GET would send) and the
    body is left out (RFC 9110 9.3.2).
    """
    if _has_no_content(status):
        if body:
            raise ValueError(f"a {status} response has no content")
        return _render_head(status, headers)
    head = _render_head(status, headers, ("Content-Length", str(len(body))))
    return head if head_only else head + bytes(body)


def render_stream_head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    """The head of a response whose body follows as ``render_chunk`` pieces and LAST_CHUNK."""
    if _has_no_content(status):
        raise ValueError(f"a {status} response has no content to stream")
    return _render_head(status, headers, ("Transfer-Encoding", "chunked"))


def render_head(status: int, headers: Sequence[tuple[str, str]]) -> bytes:
    """A head with no framing field: the body that follows ends when the connection closes
    (RFC 9112 6.3 rule 8). For streaming to HTTP/1.0 clients, which cannot read chunked."""
    return _render_head(status, headers)


def render_chunk(data: bytes) -> bytes:
    """One chunk; empty data gives b"" because a zero-size chunk would end the body."""
    if not data:
        return b""
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


def _render_head(
    status: int, headers: Iterable[tuple[str, str]], framing: tuple[str, str] | None = None
) -> bytes:
    if not 100 <= status <= 599:
        raise ValueError(f"status {status} is not a three-digit HTTP status")
    # RFC 9112 4: status-line = HTTP-version SP status-code SP [ reason-phrase ].
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"]
    for name, value in headers:
        _check_field(name, value)
        lines.append(f"{name}: {value}")
    if framing:
        lines.append(f"{framing[0]}: {framing[1]}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _check_field(name: str, value: str) -> None:
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError(f"field name {name!r} is not a token")
    if name.lower() in _FRAMING_FIELDS:
        raise ValueError(f"{name} is computed by the writer; do not pass it")
    if not _FIELD_VALUE_RE.fullmatch(value):
        raise ValueError(f"field {name} has a control character in its value")
