"""Admission: the jobs submitted to the engine that have not started yet.

``submit`` runs on the event loop and refuses what cannot be queued (429 when the queue is full,
503 when one job needs more KV cache than the whole budget). The generation thread moves the
inbox into the waiting line (``take``), drops waiting jobs that were cancelled or waited past
``queue_timeout`` (``expire``) and asks which job starts next (``next_to_start``): the oldest,
once ``max_batch_size`` and the KV budget leave room for it; nobody jumps the line.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable

from mlxd.engine.errors import EngineError, OverBudget, QueueFull, QueueTimeout, ShuttingDown
from mlxd.engine.events import Failed
from mlxd.engine.job import Job
from mlxd.engine.settings import EngineSettings

IDLE_POLL_S = 0.05  # how often a blocked admission loop re-checks timeouts

_SHUTDOWN = object()


class Admission:
    """The inbox and the waiting line. ``settings`` and ``kv_bytes`` are read at each decision:
    the engine learns its KV cost per token at warm-up and may grow its budget at calibration."""

    def __init__(
        self, settings: Callable[[], EngineSettings], kv_bytes: Callable[[int], int]
    ) -> None:
        self._settings = settings
        self._kv_bytes = kv_bytes
        self._inbox: queue.Queue = queue.Queue()
        self._pending_lock = threading.Lock()
        self._pending = 0  # submitted, not started yet (any thread reads)
        self._waiting: collections.deque[Job] = collections.deque()  # generation thread only
        self._refusal: EngineError | None = None  # set once no new job may be queued

    @property
    def pending(self) -> int:
        """Jobs submitted and not started yet, inbox included (any thread)."""
        return self._pending

    @property
    def has_waiting(self) -> bool:
        """Whether a job is in the waiting line (generation thread)."""
        return bool(self._waiting)

    def need(self, job: Job) -> int:
        """KV bytes one choice of ``job`` may hold: its prompt and all its ``max_tokens``."""
        return self._kv_bytes(len(job.prompt) + job.params.max_tokens)

    # ----- called from the event loop -----

    def submit(self, job: Job) -> None:
        """Queue a job, or raise the 429/503 that says why it cannot be queued."""
        if self._refusal is not None:
            raise type(self._refusal)(self._refusal.message)
        s = self._settings()
        budget = s.kv_budget_bytes
        need = self.need(job) * job.params.n
        if budget is not None and need > budget:
            raise OverBudget(
                f"this request needs about {need >> 20} MiB of KV "
                f"cache, more than the {budget >> 20} MiB the server may use; lower "
                "max_tokens or shorten the prompt",
            )
        with self._pending_lock:
            if self._pending >= s.queue_size:
                raise QueueFull(
                    f"the server is busy: {self._pending} requests are already waiting",
                )
            self._pending += 1
        self._inbox.put(job)

    def close(self) -> None:
        """Ask the generation thread to stop: ``take`` answers False once it gets here; from now
        on ``submit`` refuses."""
        self.refuse(ShuttingDown("the server is shutting down"))
        self._inbox.put(_SHUTDOWN)

    def refuse(self, error: EngineError) -> None:
        """Every later ``submit`` raises (a copy of) ``error``; the first refusal stays."""
        if self._refusal is None:
            self._refusal = error

    # ----- the generation thread -----

    def take(self, block: bool) -> bool:
        """Move submitted jobs into the waiting line; False once shutdown is asked for."""
        try:
            item = self._inbox.get(timeout=IDLE_POLL_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if item is _SHUTDOWN:
                return False
            self._waiting.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def expire(self) -> None:
        """Drop waiting jobs that were cancelled or waited past ``queue_timeout`` (those fail)."""
        limit = self._settings().queue_timeout
        now = time.monotonic()
        for job in [
            j
            for j in self._waiting
            if j.cancelled or (limit is not None and now - j.submitted > limit)
        ]:
            self._waiting.remove(job)
            self._unpend()
            if not job.cancelled:
                job.emit(Failed(QueueTimeout(f"the request waited {limit:g}s without starting")))

    def next_to_start(self, running: int, reserved: int) -> tuple[Job, int] | None:
        """Take the oldest waiting job off the line if it may start beside ``running`` sequences
        holding ``reserved`` KV bytes; with it, the KV bytes each of its choices reserves."""
        s = self._settings()
        if not self._waiting or running >= s.max_batch_size:
            return None
        job = self._waiting[0]
        need = self.need(job)
        budget = s.kv_budget_bytes
        if budget is not None and running and reserved + need * job.params.n > budget:
            return None  # wait for memory; the oldest job goes first, nobody jumps the line
        self._waiting.popleft()
        self._unpend()
        return job, need

    def fail_all(self, error: EngineError) -> None:
        """Fail every job not started yet, inbox included (generation thread, at its end)."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not _SHUTDOWN:
                self._waiting.append(item)
        while self._waiting:
            job = self._waiting.popleft()
            self._unpend()
            if not job.cancelled:
                job.emit(Failed(error))

    def _unpend(self) -> None:
        with self._pending_lock:
            self._pending -= 1
