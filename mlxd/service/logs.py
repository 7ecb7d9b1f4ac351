"""Logging setup: a level, a destination (stderr, or a file that survives logrotate) and a format
(text, or one JSON object per line). Fields passed as ``extra={...}`` (e.g. the access log's
``request_id``) are kept in both formats. Stdlib only."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROGRESS_INTERVAL_S = 0.1
HANDLER_NAME = "mlxd"  # marks the handler setup() installed, so a second call replaces it


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
        handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(FORMATTERS[fmt]())
    handler.name = HANDLER_NAME
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler


def flush() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


async def show_progress(label: str, stream: TextIO) -> None:
    """Until cancelled: a spinner and the seconds elapsed on one terminal line, then erase it."""
    start = time.monotonic()
    try:
        for frame in itertools.cycle("|/-\\"):
            stream.write(f"\r{frame} {label} {time.monotonic() - start:.1f}s")
            stream.flush()
            await asyncio.sleep(PROGRESS_INTERVAL_S)
    finally:
        stream.write("\r\x1b[K")  # carriage return, erase to end of line
        stream.flush()
