"""A deadline on the generation thread: a collective whose peer died or hangs may never return
(NCCL waits forever; the ring backend notices a closed socket but not a stopped process), so a
thread of its own watches that the generation thread keeps beating and says so once it stops."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("mlxd.engine")

MAX_POLL_S = 1.0  # how often the watchdog looks, at most (a quarter of the deadline when shorter)


class Watchdog:
    """Calls ``on_stall(seconds)`` once, from its own thread, when ``watched`` (a thread) has not
    called ``beat`` for longer than the current deadline; stops when ``watched`` ends."""

    def __init__(self, watched: threading.Thread, on_stall: Callable[[float], None]) -> None:
        self._watched = watched
        self._on_stall = on_stall
        self._deadline: float | None = None
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="mlxd-watchdog", daemon=True)

    def start(self, deadline: float) -> None:
        self.expect(deadline)
        self._thread.start()

    def expect(self, deadline: float) -> None:
        """From now on, beats must come at least every ``deadline`` seconds."""
        self._deadline = deadline
        self.beat()

    def beat(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        while self._watched.is_alive():
            deadline = self._deadline or MAX_POLL_S
            time.sleep(min(MAX_POLL_S, deadline / 4))
            silent = time.monotonic() - self._last
            if self._deadline is not None and silent > self._deadline and self._watched.is_alive():
                log.critical("the generation thread made no progress for %.1fs", silent)
                self._on_stall(silent)
                return
