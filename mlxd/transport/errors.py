"""One error type for everything a client can get wrong or we must refuse.

An ``HttpError`` is raised where the problem is found (parser, validator, scheduler) and carries
its HTTP status and OpenAI error type; ``to_json`` is its one wire shape, answered by
``Exchange.send_error`` (exchange.py) or sent as a stream's last event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
