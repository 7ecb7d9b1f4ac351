"""Logging setup: a level, a destination (stderr, or a file that survives logrotate) and a format
(text, or one JSON object per line). Fields passed as ``extra={...}`` (e.g. the access log's
``request_id``) are kept in both formats. On a terminal, a status line (start-up progress) can
stay below the log lines. Stdlib only."""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_INTERVAL_S = 0.1
HANDLER_NAME = "mlxd"  # marks the handler setup() installed, so a second call replaces it
BAR_WIDTH = 20  # characters of a progress bar
ERASE_LINE = "\r\x1b[K"  # carriage return, erase to the end of the line (ECMA-48 EL)


def extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value...``"""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # before any traceback
        fields = extras(record)
        line = super().formatMessage(record)
        return line + "".join(f" {k}={v}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = dt.datetime.fromtimestamp(record.created, dt.UTC)
        obj: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extras(record).items():
            obj.setdefault(key, value)
        if record.exc_info:
            obj["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False, default=str)


FORMATTERS = {"text": TextFormatter, "json": JsonFormatter}


def setup(
    level: str = "info",
    log_file: str | None = None,
    fmt: str = "text",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Point the root logger at stderr (or ``stream``) or at ``log_file``, replacing what an
    earlier call installed. A ``WatchedFileHandler`` reopens the file when logrotate moves it."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.name == HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    if log_file:
        Path(log_file).expanduser().parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.WatchedFileHandler(
            Path(log_file).expanduser(), encoding="utf-8"
        )
    else:
        handler = TerminalHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[fmt]())
    handler.name = HANDLER_NAME
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler


def flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


# ----- a live status line on a terminal, with log lines printed above it -----


class StatusLine:
    """One line at the foot of a terminal (a spinner or a bar, and the time so far). Log records
    from the same handler are printed above it: the line is erased, the record written, and the
    line drawn again, under one lock, so neither garbles the other."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.text = ""
        self.lock = threading.RLock()

    def show(self, text: str) -> None:
        with self.lock:
            self.text = text
            self.stream.write(ERASE_LINE + text)
            self.stream.flush()

    def clear(self) -> None:
        with self.lock:
            self.text = ""
            self.stream.write(ERASE_LINE)
            self.stream.flush()

    def above(self, write: Callable[[], None]) -> None:
        with self.lock:
            if self.text:
                self.stream.write(ERASE_LINE)
            write()
            if self.text:
                self.stream.write(self.text)
                self.stream.flush()


class TerminalHandler(logging.StreamHandler):
    """A StreamHandler that keeps a StatusLine (while one is shown) below its records."""

    status: StatusLine | None = None

    def emit(self, record: logging.LogRecord) -> None:
        status = self.status
        if status is None:
            super().emit(record)
        else:
            status.above(lambda: super(TerminalHandler, self).emit(record))


def status_line() -> StatusLine | None:
    """A StatusLine under mlxd's log handler when that writes to a terminal; else None (a file,
    journald, a pipe get the log lines only)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, TerminalHandler) and handler.name == HANDLER_NAME:
            isatty = getattr(handler.stream, "isatty", None)
            if isatty is not None and isatty():
                handler.status = StatusLine(handler.stream)
                return handler.status
    return None


def release(status: StatusLine) -> None:
    """Erase the status line and stop keeping it below the log records."""
    status.clear()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, TerminalHandler) and handler.status is status:
            handler.status = None


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[######--------------] 3/10``"""
    filled = width * min(done, total) // max(total, 1)
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"
