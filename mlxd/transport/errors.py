"""One error type for everything a client can get wrong or we must refuse.

An ``HttpError`` is raised where the problem is found (parser, validator, scheduler) and carries
its HTTP status and OpenAI error type; ``Exchange.send_error`` (exchange.py) answers it, or a
stream sends it as its last event, in the ``ErrorStyle`` of the route that failed (OpenAI's
``to_json`` unless the route says otherwise: Anthropic's on /v1/messages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlxd.transport import sse

# OpenAI's error "type" values, by the HTTP status they usually travel with.
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_exceeded"
SERVER_ERROR = "server_error"
UNAVAILABLE = "service_unavailable"


@dataclass(eq=False)
class HttpError(Exception):
    """An error with its HTTP status, OpenAI error type and (optionally) the offending field.

    ``close`` asks the server to close the connection after answering: set it for framing errors,
    after which the byte stream can no longer be trusted (RFC 9112 9.6 / 11.2).
    """

    status: int
    type: str
    message: str
    param: str | None = None
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())
    close: bool = False

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_json(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None, code: str | None = None) -> HttpError:
    return HttpError(400, INVALID_REQUEST, message, param=param, code=code)


@dataclass(frozen=True)
class ErrorStyle:
    """How one API family writes an error: as the JSON body of a response, and as the bytes that
    end a stream it breaks (the status line has gone out by then). A property of the route."""

    body: Callable[[HttpError], dict]
    stream_end: Callable[[HttpError], bytes]


def _openai_stream_end(err: HttpError) -> bytes:
    return sse.event(err.to_json()) + sse.DONE


OPENAI_STYLE = ErrorStyle(HttpError.to_json, _openai_stream_end)
