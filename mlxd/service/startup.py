"""Start-up, phase by phase: a log line as each long phase begins (so a log never goes quiet for a
minute), the time each took in the ready line, and on a terminal a status line below the log:
a spinner, or a bar where the phase knows its steps (calibration), with the seconds so far.

Phases are reported from whichever thread runs them (the loader thread, the generation thread),
through ``phase(name, done, total)``; the event loop draws the status line.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlxd.service import logs

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.1  # status line redraws

# What each phase is doing, said once as it begins: the log line, and the status line's label.
PHASES = {
    "model read": ("reading the model %s", "reading the model"),
    "dense copy": (
        "building a dense copy of the quantized weights%s, to time against the quantized ones",
        "building a dense copy",
    ),
    "calibration": (
        "timing quantized against dense weights%s (once per model and machine; kept for later "
        "starts)",
        "timing weight formats",
    ),
    "warm-up": ("warming up%s", "warming up"),
}


@dataclass(frozen=True)
class Step:
    name: str
    started: float
    done: int = 0
    total: int = 0  # 0: no known number of steps (a spinner, not a bar)


class Startup:
    """The phases of one start, their times, and (on a terminal) the status line."""

    def __init__(self, began: float | None = None) -> None:
        """``began``: when the process started (monotonic), if known; the time up to now
        (imports, binding the port) is the first entry, ``start``."""
        now = time.monotonic()
        self.began = now if began is None else min(began, now)
        self.took: dict[str, float] = {"start": now - began} if began is not None else {}
        self._lock = threading.Lock()
        self._step: Step | None = None

    def phase(self, name: str, done: int = 0, total: int = 0, detail: str = "") -> None:
        """``name`` runs now (``done`` of ``total`` steps in); a new name ends the last phase.
        Any thread."""
        now = time.monotonic()
        with self._lock:
            step = self._step
            if step is not None and step.name == name:
                self._step = Step(name, step.started, done, total)
                return
            self._close(step, now)
            self._step = Step(name, now, done, total)
        log.info(PHASES.get(name, (name + "%s", name))[0], detail)

    def finish(self) -> str:
        """Close the last phase; the summary for the ready line: total, then each phase."""
        now = time.monotonic()
        with self._lock:
            self._close(self._step, now)
            self._step = None
        parts = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.took.items())
        return f"{now - self.began:.1f}s" + (f" ({parts})" if parts else "")

    def _close(self, step: Step | None, now: float) -> None:
        if step is not None:
            self.took[step.name] = self.took.get(step.name, 0.0) + now - step.started

    def status_text(self, frame: str) -> str:
        """The status line now: ``| reading the model 1.2s`` or ``[####----] 4/10 timing ...``."""
        step = self._step
        total_s = time.monotonic() - self.began
        if step is None:
            return f"{frame} starting {total_s:.1f}s"
        label = PHASES.get(step.name, ("", step.name))[1]
        where = logs.bar(step.done, step.total) if step.total else frame
        return f"{where} {label} {time.monotonic() - step.started:.1f}s (start-up {total_s:.1f}s)"

    def show(self) -> asyncio.Task | None:
        """On a terminal, a task that keeps the status line drawn until cancelled; else None."""
        status = logs.status_line()
        if status is None:
            return None
        return asyncio.create_task(keep_showing(status, self.status_text))


async def keep_showing(status: logs.StatusLine, text: Callable[[str], str]) -> None:
    """Until cancelled: redraw ``status`` with ``text(spinner_frame)`` every PROGRESS_INTERVAL_S,
    then erase it."""
    try:
        for frame in itertools.cycle("|/-\\"):
            status.show(text(frame))
            await asyncio.sleep(PROGRESS_INTERVAL_S)
    finally:
        logs.release(status)
