"""The request body for ``mlxd.transport.h1``: how it is framed, and the readers that take it off
the connection's buffer as it arrives.

``body_reader`` judges the framing fields of a finished head (RFC 9112 6.1, 6.3) and returns a
``FixedBody`` (Content-Length), a ``ChunkedBody`` (Transfer-Encoding: chunked) or None for no
body. A reader's ``maybe_read(buf)`` consumes what it can from ``buf`` and returns the whole body
once it is complete, None until then; ``held`` counts the body bytes it keeps meanwhile.
"""

from __future__ import annotations

import re

from mlxd.transport.h1_head import fail, field_tokens, field_values, line_content, parse_field_line

# Limits: each names its unit, the status it raises, and why it is this size.
MAX_CHUNK_LINE_BYTES = 1024  # 400; chunk-size plus extensions, which we ignore; CRLF excluded
MAX_TRAILER_BYTES = 4 * 1024  # 431; trailer fields are read and dropped; CRLFs included
MAX_CONTENT_LENGTH_DIGITS = 18  # 400; 10**18 bytes is no real body, and int() stays cheap
MAX_CHUNK_SIZE_DIGITS = 16  # 400; 16 hex digits already span 2**64

_CHUNK_LINE_RE = re.compile(rb"([0-9A-Fa-f]+)(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?")
_HEX_RE = re.compile(rb"[0-9A-Fa-f]*")
_DIGITS_RE = re.compile(r"[0-9]+")


def body_reader(
    version: str, fields: tuple[tuple[str, str], ...], max_body: int
) -> FixedBody | ChunkedBody | None:
    """How the body ends (RFC 9112 6.1, 6.3), checked before anything else in the head;
    None for no body. 413 is raised here, from the head alone."""
    lengths = field_values(fields, "content-length")
    if field_values(fields, "transfer-encoding"):
        if version == "HTTP/1.0":
            raise fail(400, "Transfer-Encoding in an HTTP/1.0 request")
        if lengths:
            raise fail(400, "both Transfer-Encoding and Content-Length (a smuggling vector)")
        _check_codings(field_tokens(fields, "transfer-encoding"))
        return ChunkedBody(max_body)
    if not lengths:
        return None  # RFC 9112 6.3 rule 6: a request without framing has no body
    if len(lengths) > 1:
        raise fail(400, "more than one Content-Length field line")
    if not _DIGITS_RE.fullmatch(lengths[0]):
        raise fail(400, "Content-Length is not a string of digits")
    if len(lengths[0]) > MAX_CONTENT_LENGTH_DIGITS:
        raise fail(400, "Content-Length overflows")
    if int(lengths[0]) > max_body:
        raise fail(413, f"request body exceeds {max_body} bytes")
    return FixedBody(int(lengths[0])) if int(lengths[0]) else None


def _check_codings(codings: list[str]) -> None:
    if not codings or codings[-1] != "chunked":
        raise fail(400, "chunked is not the final transfer coding")
    if codings.count("chunked") > 1:
        raise fail(400, "chunked applied more than once")
    if len(codings) > 1:
        raise fail(501, f"transfer coding {codings[0]!r} is not supported")


class FixedBody:
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


class ChunkedBody:
    """RFC 9112 7.1: chunk-size [ext] CRLF data CRLF ... 0 [ext] CRLF trailers CRLF."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._body = bytearray()
        self._step = ChunkedBody._size_line
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
        line = line_content(bytes(buf[: lf + 1]))
        del buf[: lf + 1]
        match = _CHUNK_LINE_RE.fullmatch(line)
        if not match:
            raise fail(400, "malformed chunk-size line")
        if len(match[1]) > MAX_CHUNK_SIZE_DIGITS:
            raise fail(400, "chunk size overflows")
        self._left = int(match[1], 16)
        if len(self._body) + self._left > self._max_body:
            raise fail(413, f"request body exceeds {self._max_body} bytes")
        self._step = ChunkedBody._data if self._left else ChunkedBody._trailer_line
        return True

    def _data(self, buf: bytearray) -> bool:
        if not buf:
            return False
        take = min(len(buf), self._left)
        self._body += buf[:take]
        del buf[:take]
        self._left -= take
        if not self._left:
            self._step = ChunkedBody._data_end
        return True

    def _data_end(self, buf: bytearray) -> bool:
        if not b"\r\n".startswith(buf[:2]):
            raise fail(400, "chunk data not followed by CRLF")
        if len(buf) < 2:
            return False
        del buf[:2]
        self._step = ChunkedBody._size_line
        return True

    def _trailer_line(self, buf: bytearray) -> bool:
        bound = MAX_TRAILER_BYTES - self._trailer_bytes
        lf = buf.find(b"\n", 0, bound)
        if lf < 0:
            if len(buf) >= bound:
                raise fail(431, f"trailer section exceeds {MAX_TRAILER_BYTES} bytes")
            return False
        line = line_content(bytes(buf[: lf + 1]))
        del buf[: lf + 1]
        self._trailer_bytes += lf + 1
        if line:
            parse_field_line(line)  # validated, then dropped: nothing here needs trailers
        else:
            self._done = True
        return True


def _sniff_chunk_line(buf: bytearray) -> None:
    """Reject the start of a chunk-size line early: hex digits, then ";" or the CRLF."""
    partial = bytes(buf[: MAX_CHUNK_LINE_BYTES + 2])
    if partial.endswith(b"\r"):  # may be the CR of CRLF
        partial = partial[:-1]
    hex_digits = _HEX_RE.match(partial)
    assert hex_digits is not None  # "*": matches the empty string too
    digits = hex_digits.end()
    if digits < len(partial) and (digits == 0 or partial[digits] != 0x3B):
        raise fail(400, "malformed chunk-size line")
    if len(partial) > MAX_CHUNK_LINE_BYTES:
        raise fail(400, f"chunk-size line exceeds {MAX_CHUNK_LINE_BYTES} bytes")
