"""The effective configuration: one frozen record, built from the CLI (file and env come later)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST = "127.0.0.1"     # local by default: nothing listens beyond this machine unasked
DEFAULT_PORT = 8000
DEFAULT_MAX_TOKENS = 512       # when a request names no max_tokens (capped by the context)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024   # a long chat history is well under this
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Config:
    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    log_level: str = "info"
