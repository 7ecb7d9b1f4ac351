"""Errors in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``, as a body
and as the ``error`` event that ends a stream. The error type follows the HTTP status, as in
Anthropic's API (its SDK picks the exception class by status)."""

from __future__ import annotations

from mlxd.transport import sse
from mlxd.transport.errors import ErrorStyle, HttpError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",  # loading, out of KV memory, queue timeout: retry later
    504: "timeout_error",
}


def error_json(err: HttpError) -> dict:
    kind = ERROR_TYPES.get(err.status, "invalid_request_error" if err.status < 500 else "api_error")
    message = err.message
    if err.param and err.param not in message:  # no "param" field here: the message names it
        message = f"{err.param}: {message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


def _stream_end(err: HttpError) -> bytes:
    return sse.named_event("error", error_json(err))


ANTHROPIC_STYLE = ErrorStyle(error_json, _stream_end)
