"""``--idle-unload`` for one model in one process: drop the model when idle, load it on demand.

After ``idle_s`` seconds without a model request (POST routes), the engine stops, the weights and
caches are dropped and MLX's buffer cache is emptied, so the memory goes back to the system;
/health still answers 200, with ``"state": "unloaded"``. The next model request loads the model
again (requests that arrive meanwhile share that load) and is then served as usual.
(With ``--models`` the front end unloads a whole worker process instead: fleet/pool.py.)
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import mlx.core as mx

from mlxd.api.app import App
from mlxd.models import units
from mlxd.transport.errors import UNAVAILABLE, HttpError
from mlxd.transport.routing import Handler

log = logging.getLogger(__name__)

IDLE_CHECK_MAX_S = 1.0  # the idle timer's resolution (never coarser than a quarter of idle_s)
ENGINE_STOP_S = 5.0  # an idle generation thread stops in milliseconds; this is the limit


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux's /proc; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def trim_heap() -> None:
    """Hand freed heap memory back to the system: glibc keeps what MLX's CPU allocator frees in
    its arenas, so without this the RSS barely drops (Linux; elsewhere nothing to do)."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # no glibc (macOS, musl): nothing to trim
        pass


def _human(n: int | None) -> str:
    return "?" if n is None else units.human(n)


class Residency:
    """Whether the model is in memory, and the requests that need it to be."""

    def __init__(
        self,
        app: App,
        idle_s: float,
        load: Callable[[], Awaitable[None]],
        on_state: Callable[[str], None] = lambda _state: None,
    ) -> None:
        self.app = app
        self.idle_s = idle_s
        self._load = load
        self.on_state = on_state  # told "loading", "ready", "unloaded" (the PID file)
        # Residency state (event loop only).
        self.in_flight = 0
        self.last_used = time.monotonic()
        self._reload: asyncio.Task | None = None  # a load that requests wait for
        self._unloading: asyncio.Task | None = None  # an unload that requests wait out
        self._idle = asyncio.Event()  # set while no request runs

    def guard(self, handler: Handler) -> Handler:
        """``handler`` behind the residency: the model is loaded first (if it was unloaded), and
        the request counts as activity."""

        @functools.wraps(handler)  # keeps its OpenAPI description
        async def guarded(app, ex) -> None:
            await self.acquire()
            try:
                await handler(app, ex)
            finally:
                self.release()

        return guarded

    async def acquire(self) -> None:
        while self._unloading or self.app.unloaded or self._reload:
            if self._unloading is not None:
                await asyncio.shield(self._unloading)
                continue
            if self._reload is None:
                self._reload = asyncio.ensure_future(self._load_again())
            try:
                await asyncio.shield(self._reload)  # a client that leaves stops only its wait
            except Exception as exc:
                raise HttpError(
                    503, UNAVAILABLE, f"the model could not be loaded again: {exc}"
                ) from None
        self.in_flight += 1
        self._idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        self.last_used = time.monotonic()
        if self.in_flight == 0:
            self._idle.set()

    async def _load_again(self) -> None:
        started = time.monotonic()
        log.info("loading %s again (a request needs it)", self.app.name)
        self.on_state("loading")
        try:
            await self._load()
            self.app.unloaded = False
            self.on_state("ready")
            log.info("%s loaded again in %.2fs", self.app.name, time.monotonic() - started)
        finally:
            self._reload = None

    async def watch(self) -> None:
        """Until cancelled (started once the model is ready): unload the model once it has been
        idle for ``idle_s``."""
        self._idle.set()
        self.last_used = time.monotonic()  # the idle time counts from ready, not from the start
        while True:
            if self.in_flight:
                await self._idle.wait()
                continue
            left = self.last_used + self.idle_s - time.monotonic()
            if left > 0:
                await asyncio.sleep(min(left, IDLE_CHECK_MAX_S))
                continue
            if self.app.ready and self._reload is None:
                self._unloading = asyncio.ensure_future(self.unload())
                try:
                    await asyncio.shield(self._unloading)
                finally:
                    self._unloading = None
            await asyncio.sleep(min(max(self.idle_s, 0.05), IDLE_CHECK_MAX_S))

    async def unload(self) -> None:
        """Stop the engine and drop the model; log the memory before and after. The state says
        "unloaded" only once the memory is back (requests that arrive meanwhile wait for it)."""
        app, engine = self.app, self.app.engine
        before = mx.get_active_memory(), rss_bytes()
        if engine is not None:
            await asyncio.to_thread(engine.shutdown, ENGINE_STOP_S)
            if engine.alive:
                log.warning("the generation thread did not stop in %gs", ENGINE_STOP_S)
        app.engine, app.loaded = None, None
        app.forget_model()
        del engine
        gc.collect()
        mx.clear_cache()
        trim_heap()
        app.unloaded = True
        after = mx.get_active_memory(), rss_bytes()
        self.on_state("unloaded")
        log.info(
            "unloaded %s after %gs idle: MLX active memory %s -> %s, RSS %s -> %s",
            app.name,
            self.idle_s,
            _human(before[0]),
            _human(after[0]),
            _human(before[1]),
            _human(after[1]),
        )
