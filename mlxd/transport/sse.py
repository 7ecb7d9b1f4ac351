"""Sans-IO Server-Sent Events framing (WHATWG HTML, "server-sent events").

Each function returns the bytes of one event; the server puts them in HTTP chunks. Data lines may
not hold CR or LF, so a payload with newlines is split over several ``data:`` lines, which the
client joins back with LF.
"""

from __future__ import annotations

import json

CONTENT_TYPE = "text/event-stream; charset=utf-8"
DONE = b"data: [DONE]\n\n"


def _data_lines(text: str) -> bytes:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return b"".join(b"data: " + line.encode("utf-8") + b"\n" for line in lines) + b"\n"


def event(obj: object) -> bytes:
    """One ``data:`` event holding ``obj`` as compact JSON (JSON escapes newlines: one line)."""
    return _data_lines(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


def named_event(name: str, obj: object) -> bytes:
    """An event with a type (``event: NAME``) and ``obj`` as its data, as Anthropic streams
    them; ``name`` is ours, never a client's, so it holds no line break."""
    return b"event: " + name.encode("ascii") + b"\n" + event(obj)
