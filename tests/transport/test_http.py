"""mlxd.http: a table-driven corpus, each fixture parsed whole, a byte at a time and with
trailing bytes; pipelining; an h11 differential; the response writer; a seeded fuzz run.

Every error fixture ends at the byte that reveals its fault (or names that byte with ``at``), so
the byte-at-a-time run also proves each error is raised as soon as it can be, not later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import h11
import pytest

from mlxd.transport.errors import HttpError
from mlxd.transport.h1 import (
    CONTINUE_100,
    LAST_CHUNK,
    MAX_CHUNK_LINE_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADER_COUNT,
    MAX_LEADING_EMPTY_LINES,
    MAX_REQUEST_LINE_BYTES,
    MAX_TRAILER_BYTES,
    REASONS,
    Request,
    RequestParser,
    render_chunk,
    render_head,
    render_response,
    render_stream_head,
)

from fuzz_http import fuzz

TEST_MAX_BODY = 64  # bytes; small so the 413 fixtures stay small


@dataclass(frozen=True)
class Ok:
    method: str
    path: str
    body: bytes = b""
    query: str = ""
    version: str = "HTTP/1.1"
    keep_alive: bool = True
    expects_continue: bool = False
    headers: tuple[tuple[str, str], ...] | None = None  # checked when given
    h11: bool = True  # part of the h11 differential


@dataclass(frozen=True)
class Err:
    status: int
    at: int | None = None  # index of the revealing byte; None: the last byte


@dataclass(frozen=True)
class Pending:
    head: bool  # whether maybe_pending_head() has a head


class Case(NamedTuple):
    name: str
    raw: bytes
    verdict: Ok | Err | Pending
    max_body: int = TEST_MAX_BODY


def lines(*parts: bytes) -> bytes:
    """Each part as a CRLF-terminated line."""
    return b"".join(part + b"\r\n" for part in parts)


def req(*parts: bytes, body: bytes = b"") -> bytes:
    """A whole head (lines and the empty line) plus body."""
    return lines(*parts) + b"\r\n" + body


GET = b"GET / HTTP/1.1"
GET10 = b"GET / HTTP/1.0"
POST = b"POST /v1/chat/completions HTTP/1.1"
H = b"Host: x"
TE = b"Transfer-Encoding: chunked"
CHUNKED = req(POST, H, TE)  # a chunked head; append chunk bytes
NEXT = b"GET /next HTTP/1.1\r\nHost: n\r\n\r\n"

LONG_TARGET = b"/" + b"a" * (MAX_REQUEST_LINE_BYTES - len(b"GET / HTTP/1.1"))
HEAD_FILL = b"v" * (MAX_HEAD_BYTES - len(lines(GET, H)) - len(b"X: \r\n\r\n"))
MANY_FIELDS = tuple(b"X-%d: v" % i for i in range(MAX_HEADER_COUNT - 1))

SDK_BODY = b'{"model":"m","stream":true}'
OPENAI_SDK = req(
    POST,
    b"Host: 127.0.0.1:8000",
    b"Accept-Encoding: gzip, deflate",
    b"Connection: keep-alive",
    b"Accept: application/json",
    b"Content-Type: application/json",
    b"User-Agent: OpenAI/Python 1.40.0",
    b"X-Stainless-Lang: python",
    b"Authorization: Bearer sk-local",
    b"Content-Length: %d" % len(SDK_BODY),
    body=SDK_BODY,
)

VALID = [
    Case("get", req(GET, H), Ok("GET", "/", headers=(("host", "x"),))),
    Case(
        "get-query",
        req(b"GET /v1/models?limit=2&x=%20 HTTP/1.1", H),
        Ok("GET", "/v1/models", query="limit=2&x=%20"),
    ),
    Case(
        "query-slash-question", req(b"GET /p?a=/b?c HTTP/1.1", H), Ok("GET", "/p", query="a=/b?c")
    ),
    Case("query-empty", req(b"GET /p? HTTP/1.1", H), Ok("GET", "/p")),
    Case("head", req(b"HEAD /v1/models HTTP/1.1", H), Ok("HEAD", "/v1/models")),
    Case(
        "post-content-length",
        req(POST, H, b"Content-Length: 2", body=b"{}"),
        Ok("POST", "/v1/chat/completions", b"{}"),
    ),
    Case("openai-sdk", OPENAI_SDK, Ok("POST", "/v1/chat/completions", SDK_BODY)),
    Case(
        "curl",
        req(
            b"POST /v1/completions HTTP/1.1",
            b"Host: localhost:8000",
            b"User-Agent: curl/8.5.0",
            b"Accept: */*",
            b"Content-Type: application/json",
            b"Content-Length: 11",
            body=b'{"a": "b"}\n',
        ),
        Ok("POST", "/v1/completions", b'{"a": "b"}\n'),
    ),
    Case(
        "content-length-zero",
        req(POST, H, b"Content-Length: 0"),
        Ok("POST", "/v1/chat/completions"),
    ),
    Case(
        "content-length-leading-zeros",
        req(POST, H, b"Content-Length: 005", body=b"hello"),
        Ok("POST", "/v1/chat/completions", b"hello"),
    ),
    Case(
        "content-length-ows",
        req(POST, H, b"Content-Length: \t 3 \t", body=b"abc"),
        Ok("POST", "/v1/chat/completions", b"abc"),
    ),
    Case(
        "content-length-at-limit",
        req(POST, H, b"Content-Length: 64", body=b"b" * 64),
        Ok("POST", "/v1/chat/completions", b"b" * 64),
    ),
    Case(
        "body-with-crlfs",
        req(POST, H, b"Content-Length: 6", body=b"\r\n\r\n\r\n"),
        Ok("POST", "/v1/chat/completions", b"\r\n\r\n\r\n"),
    ),
    Case("post-without-framing-is-empty", req(POST, H), Ok("POST", "/v1/chat/completions")),
    Case(
        "delete-with-body",
        req(b"DELETE /x HTTP/1.1", H, b"Content-Length: 1", body=b"z"),
        Ok("DELETE", "/x", b"z"),
    ),
    Case(
        "chunked-one",
        CHUNKED + b"5\r\nhello\r\n0\r\n\r\n",
        Ok("POST", "/v1/chat/completions", b"hello"),
    ),
    Case(
        "chunked-many",
        CHUNKED + b"1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n",
        Ok("POST", "/v1/chat/completions", b"abcdef"),
    ),
    Case(
        "chunked-upper-hex",
        CHUNKED + b"A\r\n0123456789\r\n0\r\n\r\n",
        Ok("POST", "/v1/chat/completions", b"0123456789"),
    ),
    Case(
        "chunked-lower-hex",
        CHUNKED + b"b\r\n0123456789a\r\n0\r\n\r\n",
        Ok("POST", "/v1/chat/completions", b"0123456789a"),
    ),
    Case(
        "chunked-leading-zeros",
        CHUNKED + b"0005\r\nhello\r\n000\r\n\r\n",
        Ok("POST", "/v1/chat/completions", b"hello"),
    ),
    Case(
        "chunked-extension",
        CHUNKED + b"5;name=value\r\nhello\r\n0;last\r\n\r\n",
        Ok("POST", "/v1/chat/completions", b"hello"),
    ),
    Case(
        "chunked-extension-quoted",
        CHUNKED + b'5;n="a b;c"\r\nhello\r\n0\r\n\r\n',
        Ok("POST", "/v1/chat/completions", b"hello"),
    ),
    Case(
        "chunked-trailers",
        CHUNKED + b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
        Ok(
            "POST",
            "/v1/chat/completions",
            b"hello",
            headers=(("host", "x"), ("transfer-encoding", "chunked")),
        ),
    ),
    Case("chunked-empty-body", CHUNKED + b"0\r\n\r\n", Ok("POST", "/v1/chat/completions")),
    Case(
        "chunked-crlf-data",
        CHUNKED + b"4\r\n\r\n\r\n\r\n0\r\n\r\n",
        Ok("POST", "/v1/chat/completions", b"\r\n\r\n"),
    ),
    Case(
        "chunked-at-limit",
        CHUNKED + b"20\r\n" + b"c" * 32 + b"\r\n20\r\n" + b"d" * 32 + b"\r\n0\r\n\r\n",
        Ok("POST", "/v1/chat/completions", b"c" * 32 + b"d" * 32),
    ),
    Case(
        "chunked-case-insensitive",
        req(POST, H, b"Transfer-Encoding: Chunked", body=b"0\r\n\r\n"),
        Ok("POST", "/v1/chat/completions"),
    ),
    Case(
        "chunked-ows",
        req(POST, H, b"Transfer-Encoding:  chunked\t", body=b"0\r\n\r\n"),
        Ok("POST", "/v1/chat/completions"),
    ),
    Case(
        "chunked-empty-members",
        req(POST, H, b"Transfer-Encoding: , chunked", body=b"0\r\n\r\n"),
        Ok("POST", "/v1/chat/completions", h11=False),
    ),  # h11: "unsupported transfer encoding"
    Case("http10-no-host", req(GET10), Ok("GET", "/", version="HTTP/1.0", keep_alive=False)),
    Case("http10-host", req(GET10, H), Ok("GET", "/", version="HTTP/1.0", keep_alive=False)),
    Case(
        "http10-keep-alive",
        req(GET10, b"Connection: keep-alive"),
        Ok("GET", "/", version="HTTP/1.0"),
    ),
    Case(
        "http10-keep-alive-case",
        req(GET10, b"Connection: Keep-Alive"),
        Ok("GET", "/", version="HTTP/1.0"),
    ),
    Case(
        "http10-keep-alive-and-close",
        req(GET10, b"Connection: keep-alive, close"),
        Ok("GET", "/", version="HTTP/1.0", keep_alive=False),
    ),
    Case(
        "http10-content-length",
        req(b"POST / HTTP/1.0", b"Content-Length: 3", body=b"abc"),
        Ok("POST", "/", b"abc", version="HTTP/1.0", keep_alive=False),
    ),
    Case("connection-close", req(GET, H, b"Connection: close"), Ok("GET", "/", keep_alive=False)),
    Case(
        "connection-close-upper",
        req(GET, H, b"Connection: CLOSE"),
        Ok("GET", "/", keep_alive=False),
    ),
    Case(
        "connection-list",
        req(GET, H, b"Connection: Upgrade, close"),
        Ok("GET", "/", keep_alive=False),
    ),
    Case(
        "connection-two-lines",
        req(GET, H, b"Connection: foo", b"Connection: close"),
        Ok("GET", "/", keep_alive=False),
    ),
    Case("connection-keep-alive", req(GET, H, b"Connection: keep-alive"), Ok("GET", "/")),
    Case(
        "connection-empty-members",
        req(GET, H, b"Connection: ,, close ,"),
        Ok("GET", "/", keep_alive=False),
    ),
    Case(
        "expect-100-continue",
        req(POST, H, b"Expect: 100-continue", b"Content-Length: 5", body=b"hello"),
        Ok("POST", "/v1/chat/completions", b"hello", expects_continue=True),
    ),
    Case(
        "expect-case-insensitive",
        req(POST, H, b"Expect: 100-Continue", b"Content-Length: 1", body=b"x"),
        Ok("POST", "/v1/chat/completions", b"x", expects_continue=True),
    ),
    Case(
        "expect-http10-ignored",
        req(b"POST / HTTP/1.0", b"Expect: 100-continue", b"Content-Length: 1", body=b"x"),
        Ok("POST", "/", b"x", version="HTTP/1.0", keep_alive=False),
    ),
    Case("options-asterisk", req(b"OPTIONS * HTTP/1.1", H), Ok("OPTIONS", "*")),
    Case(
        "absolute-form",
        req(b"GET http://example.com/v1/models?x=1 HTTP/1.1", b"Host: example.com"),
        Ok("GET", "/v1/models", query="x=1"),
    ),
    Case(
        "absolute-form-https-port-no-path",
        req(b"GET HTTPS://example.com:8080 HTTP/1.1", H),
        Ok("GET", "/"),
    ),
    Case(
        "absolute-form-ipv6",
        req(b"GET http://[::1]:8080/a HTTP/1.1", b"Host: [::1]:8080"),
        Ok("GET", "/a"),
    ),
    Case(
        "absolute-form-query-no-path",
        req(b"GET http://h?q=1 HTTP/1.1", b"Host: h"),
        Ok("GET", "/", query="q=1"),
    ),
    Case("leading-crlf", b"\r\n" + req(GET, H), Ok("GET", "/", h11=False)),  # h11: 400
    Case(
        "leading-crlf-max",
        b"\r\n" * MAX_LEADING_EMPTY_LINES + req(GET, H),
        Ok("GET", "/", h11=False),
    ),
    Case(
        "header-ows-stripped",
        req(GET, H, b"X-A: \t spaced out \t"),
        Ok("GET", "/", headers=(("host", "x"), ("x-a", "spaced out"))),
    ),
    Case(
        "header-empty-value",
        req(GET, H, b"X-Empty:"),
        Ok("GET", "/", headers=(("host", "x"), ("x-empty", ""))),
    ),
    Case(
        "header-whitespace-value",
        req(GET, H, b"X-Empty: \t "),
        Ok("GET", "/", headers=(("host", "x"), ("x-empty", ""))),
    ),
    Case(
        "header-inner-whitespace",
        req(GET, H, b"User-Agent: a b\tc"),
        Ok("GET", "/", headers=(("host", "x"), ("user-agent", "a b\tc"))),
    ),
    Case(
        "header-obs-text",
        req(GET, H, b"X-Name: caf\xc3\xa9"),
        Ok("GET", "/", headers=(("host", "x"), ("x-name", "caf\xc3\xa9"))),
    ),
    Case(
        "header-colons-in-value",
        req(GET, H, b"X-Time: 12:30:00"),
        Ok("GET", "/", headers=(("host", "x"), ("x-time", "12:30:00"))),
    ),
    Case(
        "header-names-lowercased-in-order",
        req(GET, b"X-B: 1", H, b"x-b: 2", b"ACCEPT: */*"),
        Ok("GET", "/", headers=(("x-b", "1"), ("host", "x"), ("x-b", "2"), ("accept", "*/*"))),
    ),
    Case("method-lowercase", req(b"get / HTTP/1.1", H), Ok("get", "/")),
    Case("method-extension", req(b"PURGE /cache HTTP/1.1", H), Ok("PURGE", "/cache")),
    Case("method-tchars", req(b"M-SEARCH! /x HTTP/1.1", H), Ok("M-SEARCH!", "/x")),
    Case("path-percent-encoded", req(b"GET /a%20b%2F HTTP/1.1", H), Ok("GET", "/a%20b%2F")),
    Case(
        "path-sub-delims",
        req(b"GET /a;b=c,d!$&'()*+:@~._- HTTP/1.1", H),
        Ok("GET", "/a;b=c,d!$&'()*+:@~._-"),
    ),
    Case("path-double-slash", req(b"GET //x//y HTTP/1.1", H), Ok("GET", "//x//y")),
    Case("host-empty", req(GET, b"Host:"), Ok("GET", "/")),
    Case("host-port", req(GET, b"Host: localhost:8080"), Ok("GET", "/")),
    Case("host-ipv4", req(GET, b"Host: 127.0.0.1:11434"), Ok("GET", "/")),
    Case("host-ipv6", req(GET, b"Host: [::1]:8080"), Ok("GET", "/")),
    Case("host-name-case", req(GET, b"HOST: x"), Ok("GET", "/")),
    Case(
        "request-line-at-limit",
        req(b"GET " + LONG_TARGET + b" HTTP/1.1", H),
        Ok("GET", LONG_TARGET.decode()),
    ),
    Case("head-at-limit", req(GET, H, b"X: " + HEAD_FILL), Ok("GET", "/")),
    Case("header-count-at-limit", req(GET, H, *MANY_FIELDS), Ok("GET", "/")),
    Case(
        "body-default-limit",
        req(POST, H, b"Content-Length: 3", body=b"abc"),
        Ok("POST", "/v1/chat/completions", b"abc"),
        max_body=8 * 1024 * 1024,
    ),
]

CONTENT_LENGTH_ERRORS = [
    Case("cl-list-identical", req(POST, H, b"Content-Length: 5, 5"), Err(400)),
    Case(
        "cl-repeated-identical", req(POST, H, b"Content-Length: 5", b"Content-Length: 5"), Err(400)
    ),
    Case("cl-differing", req(POST, H, b"Content-Length: 5", b"Content-Length: 6"), Err(400)),
    Case("cl-list-differing", req(POST, H, b"Content-Length: 5, 6"), Err(400)),
    Case("cl-plus", req(POST, H, b"Content-Length: +5"), Err(400)),
    Case("cl-minus", req(POST, H, b"Content-Length: -5"), Err(400)),
    Case("cl-underscore", req(POST, H, b"Content-Length: 5_0"), Err(400)),
    Case("cl-hex-prefix", req(POST, H, b"Content-Length: 0x5"), Err(400)),
    Case("cl-hex-letter", req(POST, H, b"Content-Length: a"), Err(400)),
    Case("cl-inner-space", req(POST, H, b"Content-Length: 5 0"), Err(400)),
    Case("cl-inner-tab", req(POST, H, b"Content-Length: 5\t0"), Err(400)),
    Case("cl-empty", req(POST, H, b"Content-Length:"), Err(400)),
    Case("cl-decimal", req(POST, H, b"Content-Length: 5.0"), Err(400)),
    Case("cl-exponent", req(POST, H, b"Content-Length: 5e2"), Err(400)),
    Case("cl-non-ascii-digit", req(POST, H, b"Content-Length: \xb9"), Err(400)),
    Case("cl-overflow-19-digits", req(POST, H, b"Content-Length: 1" + b"0" * 18), Err(400)),
    Case("cl-overflow-huge", req(POST, H, b"Content-Length: " + b"9" * 5000), Err(400)),
    Case("cl-too-large", req(POST, H, b"Content-Length: 65"), Err(413)),
    Case("cl-too-large-18-digits", req(POST, H, b"Content-Length: " + b"9" * 18), Err(413)),
    Case(
        "cl-too-large-default",
        req(POST, H, b"Content-Length: 8388609"),
        Err(413),
        max_body=8 * 1024 * 1024,
    ),
    Case(
        "cl-too-large-before-expect",
        req(POST, H, b"Expect: 100-continue", b"Content-Length: 65"),
        Err(413),
    ),
]

TRANSFER_ENCODING_ERRORS = [
    Case("te-gzip-only", req(POST, H, b"Transfer-Encoding: gzip"), Err(400)),
    Case("te-identity", req(POST, H, b"Transfer-Encoding: identity"), Err(400)),
    Case("te-xchunked", req(POST, H, b"Transfer-Encoding: xchunked"), Err(400)),
    Case("te-gzip-chunked", req(POST, H, b"Transfer-Encoding: gzip, chunked"), Err(501)),
    Case("te-gzip-chunked-lines", req(POST, H, b"Transfer-Encoding: gzip", TE), Err(501)),
    Case("te-chunked-gzip", req(POST, H, b"Transfer-Encoding: chunked, gzip"), Err(400)),
    Case("te-chunked-twice", req(POST, H, b"Transfer-Encoding: chunked, chunked"), Err(400)),
    Case("te-chunked-twice-lines", req(POST, H, TE, TE), Err(400)),
    Case("te-empty", req(POST, H, b"Transfer-Encoding:"), Err(400)),
    Case("te-parameter", req(POST, H, b"Transfer-Encoding: chunked;q=1"), Err(400)),
    Case("te-and-cl", req(POST, H, TE, b"Content-Length: 5"), Err(400)),
    Case("cl-and-te", req(POST, H, b"Content-Length: 5", TE), Err(400)),
    Case("te-http10", req(b"POST / HTTP/1.0", TE), Err(400)),
    Case("te-gzip-http10", req(b"POST / HTTP/1.0", b"Transfer-Encoding: gzip"), Err(400)),
]

CHUNK_ERRORS = [
    Case("chunk-0x", CHUNKED + b"0x", Err(400)),
    Case("chunk-plus", CHUNKED + b"+", Err(400)),
    Case("chunk-minus", CHUNKED + b"-", Err(400)),
    Case("chunk-leading-space", CHUNKED + b" ", Err(400)),
    Case("chunk-space-before-semicolon", CHUNKED + b"5 ", Err(400)),
    Case("chunk-tab-before-crlf", CHUNKED + b"5\t", Err(400)),
    Case("chunk-not-hex", CHUNKED + b"g", Err(400)),
    Case("chunk-underscore", CHUNKED + b"1_", Err(400)),
    Case("chunk-empty-size", CHUNKED + b"\r\n", Err(400)),
    Case("chunk-no-digits-extension", CHUNKED + b";", Err(400)),
    Case("chunk-bare-lf", CHUNKED + b"5\n", Err(400)),
    Case("chunk-bare-cr", CHUNKED + b"5\rx", Err(400)),
    Case("chunk-size-overflow", CHUNKED + b"1" + b"0" * 16 + b"\r\n", Err(400)),
    Case("chunk-too-large", CHUNKED + b"41\r\n", Err(413)),
    Case("chunk-cumulative-too-large", CHUNKED + b"20\r\n" + b"c" * 32 + b"\r\n21\r\n", Err(413)),
    Case("chunk-line-too-long", CHUNKED + b"5;" + b"a" * (MAX_CHUNK_LINE_BYTES - 1), Err(400)),
    Case("chunk-extension-ctl", CHUNKED + b"5;a\x01b\r\n", Err(400)),
    Case("chunk-data-then-junk", CHUNKED + b"5\r\nhelloX", Err(400)),
    Case("chunk-data-then-bare-lf", CHUNKED + b"5\r\nhello\n", Err(400)),
    Case("chunk-data-then-cr-junk", CHUNKED + b"5\r\nhello\rX", Err(400)),
    Case("chunk-data-longer-than-size", CHUNKED + b"3\r\nhell", Err(400)),
    Case("chunk-trailer-no-colon", CHUNKED + b"0\r\nbad\r\n", Err(400)),
    Case("chunk-trailer-obs-fold", CHUNKED + b"0\r\nX: a\r\n b\r\n", Err(400)),
    Case("chunk-trailer-bare-lf", CHUNKED + b"0\r\nX: a\n", Err(400)),
    Case("chunk-last-bare-lf", CHUNKED + b"0\r\n\n", Err(400)),
    Case("chunk-trailer-too-big", CHUNKED + b"0\r\nX: " + b"a" * (MAX_TRAILER_BYTES - 3), Err(431)),
]

REQUEST_LINE_ERRORS = [
    Case("rl-double-space", b"GET  / HTTP/1.1\r\n", Err(400)),
    Case("rl-trailing-space", b"GET / HTTP/1.1 \r\n", Err(400)),
    Case("rl-leading-space", b" ", Err(400)),
    Case("rl-tab-separator", b"GET\t", Err(400)),
    Case("rl-http09", b"GET /\r\n", Err(400)),
    Case("rl-missing-target", b"GET HTTP/1.1\r\n", Err(400)),
    Case("rl-version-lowercase", b"GET / http/1.1\r\n", Err(400)),
    Case("rl-version-two-digits", b"GET / HTTP/11\r\n", Err(400)),
    Case("rl-version-three-parts", b"GET / HTTP/1.1.1\r\n", Err(400)),
    Case("rl-version-junk", b"GET / FOO\r\n", Err(400)),
    Case("rl-http20", b"GET / HTTP/2.0\r\n", Err(505)),
    Case("rl-http12", b"GET / HTTP/1.2\r\n", Err(505)),
    Case("rl-http09-version", b"GET / HTTP/0.9\r\n", Err(505)),
    Case("rl-http30", b"GET / HTTP/3.0\r\n", Err(505)),
    Case("rl-method-paren", b"GE(", Err(400)),
    Case("rl-method-at", b"GE@", Err(400)),
    Case("rl-method-non-ascii", b"G\xc3", Err(400)),
    Case("rl-method-nul", b"GET\x00", Err(400)),
    Case("rl-target-relative", b"GET foo HTTP/1.1\r\n", Err(400)),
    Case("rl-authority-form-get", b"GET example.com:80 HTTP/1.1\r\n", Err(400)),
    Case("rl-connect", b"CONNECT example.com:443 HTTP/1.1\r\n", Err(501)),
    Case("rl-connect-origin-form", b"CONNECT / HTTP/1.1\r\n", Err(501)),
    Case("rl-asterisk-get", b"GET * HTTP/1.1\r\n", Err(400)),
    Case("rl-target-fragment", b"GET /a#b HTTP/1.1\r\n", Err(400)),
    Case("rl-target-quote", b'GET /"a" HTTP/1.1\r\n', Err(400)),
    Case("rl-target-backslash", b"GET /a\\b HTTP/1.1\r\n", Err(400)),
    Case("rl-target-brace", b"GET /{a} HTTP/1.1\r\n", Err(400)),
    Case("rl-target-non-ascii", b"GET /caf\xc3\xa9 HTTP/1.1\r\n", Err(400)),
    Case("rl-target-bad-percent", b"GET /%zz HTTP/1.1\r\n", Err(400)),
    Case("rl-target-short-percent", b"GET /%2 HTTP/1.1\r\n", Err(400)),
    Case("rl-target-nul", b"GET /\x00 HTTP/1.1\r\n", Err(400)),
    Case("rl-absolute-userinfo", b"GET http://u:p@h/ HTTP/1.1\r\n", Err(400)),
    Case("rl-absolute-ftp", b"GET ftp://h/ HTTP/1.1\r\n", Err(400)),
    Case("rl-absolute-empty-host", b"GET http:/// HTTP/1.1\r\n", Err(400)),
    Case("rl-bare-lf", b"GET / HTTP/1.1\n", Err(400)),
    Case("rl-bare-cr", b"GET / HTTP/1.1\rX\r\n", Err(400)),
    Case("rl-too-long", b"GET /" + b"a" * (MAX_REQUEST_LINE_BYTES - 4), Err(414)),
    Case("rl-too-long-method", b"G" * (MAX_REQUEST_LINE_BYTES + 1), Err(414)),
    Case("rl-too-long-cr-not-lf", b"GET " + LONG_TARGET + b" HTTP/1.1\rX", Err(414)),
    Case("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Err(400, at=0)),
    Case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Err(400, at=11)),
    Case("binary-nul", b"\x00\x01\x02", Err(400, at=0)),
    Case("leading-bare-lf", b"\n", Err(400)),
    Case("leading-cr-cr", b"\r\r", Err(400)),
    Case("leading-crlf-too-many", b"\r\n" * (MAX_LEADING_EMPTY_LINES + 1), Err(400)),
]

FIELD_ERRORS = [
    Case("header-bare-lf", lines(GET) + b"Host: x\n", Err(400)),
    Case("head-ends-bare-lf", lines(GET, H) + b"\n", Err(400)),
    Case("header-bare-cr", lines(GET, H) + b"X: a\rb\r\n", Err(400)),
    Case("header-starts-cr", lines(GET, H) + b"\rX: a\r\n", Err(400)),
    Case("space-before-colon", lines(GET, b"Host : x"), Err(400)),
    Case("tab-before-colon", lines(GET, b"Host\t: x"), Err(400)),
    Case("obs-fold", lines(GET, H, b"X: a", b" b"), Err(400)),
    Case("obs-fold-tab", lines(GET, H, b"X: a", b"\tb"), Err(400)),
    Case("space-after-request-line", lines(GET, b" Host: x"), Err(400)),
    Case("no-colon", lines(GET, b"Host x"), Err(400)),
    Case("empty-name", lines(GET, b": x"), Err(400)),
    Case("name-at-sign", lines(GET, b"X@Y: z"), Err(400)),
    Case("name-non-ascii", lines(GET, b"X\xc3: z"), Err(400)),
    Case("value-nul", lines(GET, b"X: a\x00b"), Err(400)),
    Case("value-soh", lines(GET, b"X: \x01"), Err(400)),
    Case("value-escape", lines(GET, b"X: \x1b[31m"), Err(400)),
    Case("value-del", lines(GET, b"X: a\x7f"), Err(400)),
    Case("value-vt", lines(GET, b"X: a\x0bb"), Err(400)),
    Case("host-missing", req(GET), Err(400)),
    Case("host-missing-absolute-form", req(b"GET http://h/ HTTP/1.1"), Err(400)),
    Case("host-twice", req(GET, H, H), Err(400)),
    Case("host-twice-case", req(GET, H, b"HOST: y"), Err(400)),
    Case("host-twice-http10", req(GET10, H, H), Err(400)),
    Case("host-space", req(GET, b"Host: a b"), Err(400)),
    Case("host-slash", req(GET, b"Host: a/b"), Err(400)),
    Case("host-userinfo", req(GET, b"Host: u@h"), Err(400)),
    Case("host-bad-port", req(GET, b"Host: h:x"), Err(400)),
    Case("connection-not-token", req(GET, H, b"Connection: close;x"), Err(400)),
    Case("expect-unknown", req(POST, H, b"Expect: foo"), Err(417)),
    Case("expect-list-with-unknown", req(POST, H, b"Expect: 100-continue, foo"), Err(417)),
    Case("expect-parameter", req(POST, H, b"Expect: 100-continue;x=1"), Err(417)),
    Case("expect-unknown-http10", req(b"POST / HTTP/1.0", b"Expect: foo"), Err(417)),
    # The empty line's CR is the first byte that cannot fit in MAX_HEAD_BYTES.
    Case("head-too-big", lines(GET, H, b"X: " + HEAD_FILL + b"v") + b"\r", Err(431)),
    Case(
        "head-too-big-unterminated",
        lines(GET, H) + b"X: " + b"v" * (MAX_HEAD_BYTES - len(lines(GET, H)) - 3),
        Err(431),
    ),
    Case("header-count-over", lines(GET, H, *MANY_FIELDS, b"X-last: v"), Err(431)),
]

PENDING = [
    Case("pending-request-line", b"GET / HTT", Pending(head=False)),
    Case("pending-leading-crlfs", b"\r\n\r\n", Pending(head=False)),
    Case("pending-head", lines(GET, H), Pending(head=False)),
    Case("pending-head-cr", lines(GET, H) + b"\r", Pending(head=False)),
    Case("pending-cl-body", req(POST, H, b"Content-Length: 5", body=b"hel"), Pending(head=True)),
    Case("pending-chunk", CHUNKED + b"5\r\nhel", Pending(head=True)),
    Case("pending-chunk-size-cr", CHUNKED + b"5\r", Pending(head=True)),
    Case("pending-trailer", CHUNKED + b"0\r\nX: 1\r\n", Pending(head=True)),
]

INVALID = (
    CONTENT_LENGTH_ERRORS
    + TRANSFER_ENCODING_ERRORS
    + CHUNK_ERRORS
    + REQUEST_LINE_ERRORS
    + FIELD_ERRORS
)
CORPUS = VALID + INVALID + PENDING


def ids(cases: list[Case]) -> list[str]:
    return [case.name for case in cases]


def outcome(parser: RequestParser) -> Request | HttpError | None:
    try:
        return parser.maybe_next_request()
    except HttpError as error:
        return error


def check(verdict: Ok | Err | Pending, result: Request | HttpError | None) -> None:
    match verdict:
        case Ok():
            assert isinstance(result, Request), result
            got = (
                result.method,
                result.path,
                result.body,
                result.query,
                result.version,
                result.keep_alive,
                result.expects_continue,
            )
            assert got == (
                verdict.method,
                verdict.path,
                verdict.body,
                verdict.query,
                verdict.version,
                verdict.keep_alive,
                verdict.expects_continue,
            )
            if verdict.headers is not None:
                assert result.headers == verdict.headers
        case Err():
            assert isinstance(result, HttpError), result
            assert (result.status, result.close) == (verdict.status, True), result.message
        case Pending():
            assert result is None


def test_corpus_is_large_and_names_are_unique():
    assert len(CORPUS) >= 100
    assert len(set(ids(CORPUS))) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=ids(CORPUS))
def test_whole(case: Case):
    parser = RequestParser(case.max_body)
    parser.feed(case.raw)
    result = outcome(parser)
    check(case.verdict, result)
    if isinstance(result, HttpError):  # dead: the same error again, nothing held
        assert outcome(parser) is result
        assert parser.buffered == 0 and parser.maybe_pending_head() is None
    elif isinstance(result, Request):
        assert parser.buffered == 0 and outcome(parser) is None
    else:
        assert (parser.maybe_pending_head() is not None) == case.verdict.head
        parser.feed_eof()  # an unfinished request is dropped, never returned
        assert outcome(parser) is None and parser.buffered == 0
        assert parser.maybe_pending_head() is None


@pytest.mark.parametrize("case", CORPUS, ids=ids(CORPUS))
def test_byte_at_a_time(case: Case):
    parser = RequestParser(case.max_body)
    result, index = None, -1
    for index in range(len(case.raw)):
        parser.feed(case.raw[index : index + 1])
        if (result := outcome(parser)) is not None:
            break
    check(case.verdict, result)
    if not isinstance(case.verdict, Pending):
        at = getattr(case.verdict, "at", None)
        assert index == (len(case.raw) - 1 if at is None else at)


@pytest.mark.parametrize("case", VALID + INVALID, ids=ids(VALID + INVALID))
def test_trailing_bytes(case: Case):
    parser = RequestParser(case.max_body)
    parser.feed(case.raw + NEXT + b"GET /ne")
    check(case.verdict, outcome(parser))
    if isinstance(case.verdict, Ok):
        assert parser.maybe_next_request().path == "/next"
        assert parser.maybe_next_request() is None and parser.buffered == len(b"GET /ne")


def test_pipelining_in_order():
    stream = (
        req(GET, H)
        + req(POST, H, b"Content-Length: 3", body=b"abc")
        + b"\r\n"
        + CHUNKED
        + b"2\r\nhi\r\n0\r\n\r\n"
        + req(b"GET /last HTTP/1.1", H)
    )
    for chunk_size in (len(stream), 1, 7):
        parser = RequestParser()
        got = []
        for start in range(0, len(stream), chunk_size):
            parser.feed(stream[start : start + chunk_size])
            while (request := parser.maybe_next_request()) is not None:
                got.append((request.method, request.path, request.body))
        assert got == [
            ("GET", "/", b""),
            ("POST", "/v1/chat/completions", b"abc"),
            ("POST", "/v1/chat/completions", b"hi"),
            ("GET", "/last", b""),
        ]
        assert parser.buffered == 0


def test_pipelined_error_after_good_request():
    parser = RequestParser()
    parser.feed(req(GET, H) + b"GET  / HTTP/1.1\r\n")
    assert parser.maybe_next_request().path == "/"
    with pytest.raises(HttpError) as caught:
        parser.maybe_next_request()
    assert caught.value.status == 400
    parser.feed(req(GET, H))  # ignored: the parser is dead
    with pytest.raises(HttpError) as again:
        parser.maybe_next_request()
    assert again.value is caught.value


def test_expect_continue_flow():
    parser = RequestParser()
    parser.feed(req(POST, H, b"Expect: 100-continue", b"Content-Length: 5"))
    assert parser.maybe_next_request() is None
    head = parser.maybe_pending_head()
    assert head is not None and head.expects_continue and head.header("content-length") == "5"
    parser.feed(b"hello")
    assert parser.maybe_next_request().body == b"hello"
    assert parser.maybe_pending_head() is None


def test_413_without_waiting_for_the_body():
    parser = RequestParser()
    parser.feed(req(POST, H, b"Content-Length: %d" % (10**9)))
    with pytest.raises(HttpError) as caught:
        parser.maybe_next_request()
    assert (caught.value.status, caught.value.close) == (413, True)


@pytest.mark.parametrize(
    "junk, status", [(b"a" * 1_000_000, 414), (lines(GET, H) + b"X: " + b"a" * 1_000_000, 431)]
)
def test_limits_hold_however_much_is_fed(junk: bytes, status: int):
    parser = RequestParser()
    parser.feed(junk)
    with pytest.raises(HttpError) as caught:
        parser.maybe_next_request()
    assert caught.value.status == status and parser.buffered == 0


def test_feed_after_eof_is_a_caller_bug():
    parser = RequestParser()
    parser.feed_eof()
    with pytest.raises(RuntimeError):
        parser.feed(b"GET")


def test_head_header_lookup():
    parser = RequestParser()
    parser.feed(req(GET, H, b"X-A: 1", b"x-a: 2"))
    request = parser.maybe_next_request()
    assert request.header("X-A") == "1" and request.head.header("missing") is None


def h11_view(raw: bytes) -> tuple:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES + 1024)
    conn.receive_data(raw)
    request, body = conn.next_event(), b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage), event
    return (
        request.method.decode(),
        request.target.decode(),
        tuple((name.decode(), value.decode("latin-1")) for name, value in request.headers),
        body,
    )


@pytest.mark.parametrize(
    "case", [c for c in VALID if c.verdict.h11], ids=ids([c for c in VALID if c.verdict.h11])
)
def test_agrees_with_h11(case: Case):
    parser = RequestParser(case.max_body)
    parser.feed(case.raw)
    ours = parser.maybe_next_request()
    theirs = h11_view(case.raw)
    # h11 lower-cases Transfer-Encoding values; we keep field values as sent.
    headers = tuple((k, v.lower() if k == "transfer-encoding" else v) for k, v in ours.headers)
    assert (ours.method, ours.target, headers, ours.body) == theirs


# Response writer


def test_render_response():
    got = render_response(200, [("Content-Type", "application/json")], b"{}")
    assert got == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )


def test_render_response_head_only_keeps_get_length():
    got = render_response(200, [], b"hello", head_only=True)
    assert got == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"


@pytest.mark.parametrize(
    "status, line",
    [
        (404, b"HTTP/1.1 404 Not Found\r\n"),
        (413, b"HTTP/1.1 413 Content Too Large\r\n"),
        (431, b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        (299, b"HTTP/1.1 299 \r\n"),
    ],
)
def test_status_line(status: int, line: bytes):
    assert render_response(status, [], b"x").startswith(line)


def test_no_content_statuses_have_no_length():
    assert render_response(204, [("X", "1")]) == b"HTTP/1.1 204 No Content\r\nX: 1\r\n\r\n"
    assert render_response(304, []) == b"HTTP/1.1 304 Not Modified\r\n\r\n"
    assert render_response(100, []) == CONTINUE_100 == b"HTTP/1.1 100 Continue\r\n\r\n"
    with pytest.raises(ValueError):
        render_response(204, [], b"body")


@pytest.mark.parametrize(
    "status, headers",
    [
        (200, [("X", "a\r\nSet-Cookie: evil")]),
        (200, [("X", "a\nb")]),
        (200, [("X", "a\x00")]),
        (200, [("Bad Name", "v")]),
        (200, [("", "v")]),
        (200, [("Content-Length", "1")]),
        (200, [("transfer-encoding", "chunked")]),
        (99, []),
        (600, []),
    ],
)
def test_render_refuses_caller_bugs(status: int, headers: list[tuple[str, str]]):
    with pytest.raises(ValueError):
        render_response(status, headers, b"x")


def test_stream_rendering():
    head = render_stream_head(200, [("Content-Type", "text/event-stream")])
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert render_chunk(b"hello") == b"5\r\nhello\r\n"
    assert render_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert render_chunk(b"") == b""
    assert LAST_CHUNK == b"0\r\n\r\n"
    with pytest.raises(ValueError):
        render_stream_head(204, [])


def test_render_head_has_no_framing():
    assert render_head(200, [("Content-Type", "text/event-stream")]) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    )
    with pytest.raises(ValueError):
        render_head(200, [("Content-Length", "5")])


def test_h11_reads_what_we_write():
    for wire, body in [
        (render_response(201, [("X", "1")], b"made"), b"made"),
        (
            render_stream_head(200, [])
            + render_chunk(b"data: 1\n\n")
            + render_chunk(b"")
            + render_chunk(b"data: 2\n\n")
            + LAST_CHUNK,
            b"data: 1\n\ndata: 2\n\n",
        ),
    ]:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        client.receive_data(wire)
        response, got = client.next_event(), b""
        while isinstance(event := client.next_event(), h11.Data):
            got += event.data
        assert isinstance(response, h11.Response) and isinstance(event, h11.EndOfMessage)
        assert got == body


def test_reasons_cover_parser_statuses():
    for status in (400, 413, 414, 417, 431, 501, 505):
        assert status in REASONS


# Fuzz: seeded, time-bounded; `python tools/fuzz_http.py --count N --seed S` runs it longer.


def test_fuzz_seeded():
    report = fuzz([case.raw for case in CORPUS], seed=20240601, count=None, seconds=3.0)
    assert report.count > 500
    assert not report.findings, report.findings[0]
