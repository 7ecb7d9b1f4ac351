"""The request head for ``mlxd.transport.h1``: the ``Head`` record and the parsing of its lines.

Request line (method, target, version), field lines, and the head-level checks made once the
empty line arrives: Host, Connection and Expect. Every fault is ``fail``'s HttpError with
``close=True``; the strictness rules are listed in ``mlxd.transport.h1``'s docstring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlxd.transport.errors import INVALID_REQUEST, HttpError

# Limits: each names its unit, the status it raises, and why it is this size.
MAX_REQUEST_LINE_BYTES = 8 * 1024  # 414; RFC 9112 3 recommends at least 8000 octets; CRLF excluded
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
    rb"(?i:https?)://(?:"
    + _IP_LITERAL
    + b"|"
    + _REG_NAME
    + b"+)"
    + _PORT
    + rb"((?:/"
    + _PCHAR
    + rb"*)*)"
    + _QUERY
)
# RFC 9110 7.2: Host = uri-host [ ":" port ]; uri-host may be empty.
_HOST_VALUE_RE = re.compile(rb"(?:" + _IP_LITERAL + b"|" + _REG_NAME + b"*)" + _PORT)
_VERSION_RE = re.compile(rb"HTTP/[0-9]\.[0-9]")
# Any other HTTP/x.y is 505, HTTP/1.2 included (RFC 9110 2.5 would let us read it as 1.1).
_SUPPORTED_VERSIONS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0"}


def fail(status: int, message: str) -> HttpError:
    """A protocol error: after one the byte stream cannot be trusted, hence ``close=True``."""
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


def sniff_request_line(sniff: bytes, length: int) -> None:
    """Reject a request line, whole or the start of one, as early as its bytes allow.

    ``sniff`` is its first SNIFF_BYTES of content, ``length`` its content length so far. Faults
    are checked in the order of the byte that reveals them, so feeding a line whole or a byte at
    a time raises the same status.
    """
    method = _TCHARS_RE.match(sniff)
    assert method is not None  # "*": matches the empty string too
    method_end = method.end()
    if method_end < len(sniff) and (method_end == 0 or sniff[method_end] != 0x20):
        if sniff[:1] == b"\x16":
            raise fail(400, "TLS handshake on a plain-HTTP port; use http://, not https://")
        raise fail(400, "request line does not start with a method token")
    if sniff.startswith(HTTP2_PREFACE_START):
        raise fail(400, "HTTP/2 connection preface; this server speaks HTTP/1.1")
    if length > MAX_REQUEST_LINE_BYTES:
        raise fail(414, f"request line exceeds {MAX_REQUEST_LINE_BYTES} bytes")


def line_content(raw: bytes) -> bytes:
    """A line without its CRLF; RFC 9112 2.2: bare LF and bare CR are rejected here."""
    if not raw.endswith(b"\r\n"):
        raise fail(400, "line ends in a bare LF; CRLF required")
    content = raw[:-2]
    if b"\r" in content:
        raise fail(400, "bare CR inside a line")
    return content


def parse_request_line(line: bytes) -> tuple[str, str, str, str, str]:
    """RFC 9112 3: method SP request-target SP HTTP-version, one SP each."""
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise fail(400, "request line is not 'method SP target SP version'")
    method, target, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise fail(400, "method is not a token")
    if not _VERSION_RE.fullmatch(version):
        raise fail(400, "malformed HTTP version")
    if version not in _SUPPORTED_VERSIONS:
        raise fail(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if method == b"CONNECT":
        raise fail(501, "CONNECT is not supported; this is not a proxy")
    path, query = _split_target(method, target)
    return (
        method.decode("ascii"),
        target.decode("ascii"),
        path,
        query,
        _SUPPORTED_VERSIONS[version],
    )


def _split_target(method: bytes, target: bytes) -> tuple[str, str]:
    """(path, query) of an origin-, absolute- or asterisk-form target (RFC 9112 3.2)."""
    if target == b"*":
        if method != b"OPTIONS":
            raise fail(400, "asterisk-form target is only for OPTIONS")
        return "*", ""
    for form in (_ORIGIN_FORM_RE, _ABSOLUTE_FORM_RE):
        if match := form.fullmatch(target):
            return (match[1] or b"/").decode("ascii"), (match[2] or b"").decode("ascii")
    raise fail(400, "request-target is not origin-form or absolute-form")


def parse_field_line(line: bytes) -> tuple[str, str]:
    """RFC 9112 5: field-name ":" OWS field-value OWS."""
    if line[:1] in (b" ", b"\t"):  # RFC 9112 5.2 obs-fold, or 2.2 space after the start line
        raise fail(400, "field line starts with whitespace (obsolete line folding)")
    name, colon, value = line.partition(b":")
    if not colon:
        raise fail(400, "field line without a colon")
    if not _TOKEN_RE.fullmatch(name):
        if name.endswith((b" ", b"\t")):  # RFC 9112 5.1: MUST reject
            raise fail(400, "whitespace between field name and colon")
        raise fail(400, "field name is not a token")
    value = value.strip(b" \t")
    if not _FIELD_VALUE_RE.fullmatch(value):
        raise fail(400, f"control character in the value of {name.decode('ascii')}")
    return name.decode("ascii").lower(), value.decode("latin-1")


def field_values(fields: tuple[tuple[str, str], ...], name: str) -> list[str]:
    """The values of every line of field ``name`` (lower-case), in order."""
    return [value for key, value in fields if key == name]


def _members(fields: tuple[tuple[str, str], ...], name: str) -> list[str]:
    """RFC 9110 5.6.1: the members of a comma list over all lines of ``name``, lower-cased,
    without OWS; empty members are ignored."""
    members = [m.strip(" \t") for value in field_values(fields, name) for m in value.split(",")]
    return [m.lower() for m in members if m]


def field_tokens(fields: tuple[tuple[str, str], ...], name: str) -> list[str]:
    """``_members`` of a list whose members are tokens (Connection, Transfer-Encoding)."""
    members = _members(fields, name)
    for member in members:
        if not _TOKEN_RE.fullmatch(member.encode("latin-1")):
            raise fail(400, f"{name} member {member!r} is not a token")
    return members


def build_head(
    request_line: tuple[str, str, str, str, str], fields: tuple[tuple[str, str], ...]
) -> Head:
    method, target, path, query, version = request_line
    _check_host(version, fields)
    options = field_tokens(fields, "connection")  # RFC 9110 7.6.1
    keep_alive = "close" not in options and (version == "HTTP/1.1" or "keep-alive" in options)
    return Head(
        method, target, path, query, version, fields, keep_alive, _expects_continue(version, fields)
    )


def _check_host(version: str, fields: tuple[tuple[str, str], ...]) -> None:
    """RFC 9112 3.2: a 1.1 request has exactly one Host; no request has two."""
    hosts = field_values(fields, "host")
    if len(hosts) > 1:
        raise fail(400, "more than one Host header field")
    if not hosts and version == "HTTP/1.1":
        raise fail(400, "HTTP/1.1 request without a Host header field")
    if hosts and not _HOST_VALUE_RE.fullmatch(hosts[0].encode("latin-1")):
        raise fail(400, "invalid Host header field")


def _expects_continue(version: str, fields: tuple[tuple[str, str], ...]) -> bool:
    """RFC 9110 10.1.1: 100-continue is the only expectation; it is ignored in HTTP/1.0."""
    members = _members(fields, "expect")
    if any(m != "100-continue" for m in members):
        raise fail(417, "the only supported expectation is 100-continue")
    return bool(members) and version == "HTTP/1.1"
