"""The one place engine errors become HTTP errors (status, OpenAI type, code, Retry-After)."""

from __future__ import annotations

from mlxd.engine.errors import (
    BadPrompt,
    EngineDead,
    EngineError,
    GenerationFailed,
    OverBudget,
    QueueFull,
    QueueTimeout,
    ShuttingDown,
)
from mlxd.transport.errors import (
    INVALID_REQUEST,
    RATE_LIMIT,
    SERVER_ERROR,
    UNAVAILABLE,
    HttpError,
)

# engine error -> (HTTP status, OpenAI error type, code)
STATUS: dict[type[EngineError], tuple[int, str, str | None]] = {
    QueueFull: (429, RATE_LIMIT, "queue_full"),
    OverBudget: (503, UNAVAILABLE, "insufficient_memory"),
    QueueTimeout: (503, UNAVAILABLE, "queue_timeout"),
    ShuttingDown: (503, UNAVAILABLE, "shutting_down"),
    EngineDead: (503, UNAVAILABLE, "engine_failed"),
    BadPrompt: (400, INVALID_REQUEST, None),
    GenerationFailed: (500, SERVER_ERROR, "generation_failed"),
}


def http_error(exc: BaseException) -> HttpError:
    """``exc`` as the error a client gets: HttpErrors pass through, engine errors by the table,
    anything else is a 500 (its details stay in the server log)."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, EngineError):
        status, kind, code = STATUS.get(type(exc), (500, SERVER_ERROR, None))
        headers = () if exc.retry_after_s is None else (("Retry-After", str(exc.retry_after_s)),)
        param = exc.param if isinstance(exc, BadPrompt) else None
        return HttpError(status, kind, exc.message, param=param, code=code, headers=headers)
    return HttpError(500, SERVER_ERROR, f"internal error: {type(exc).__name__}")
