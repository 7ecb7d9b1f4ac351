"""Which models are loaded: on demand, within --max-loaded and the memory budget, least recently
used idle model out first, unloaded when idle, restarted after a crash unless it keeps crashing.

Everything here runs on the front end's event loop; state changes happen between awaits, so a
decision (pick the models to unload, mark the new one loading) is never interleaved with another.
Requests that need a model that is loading wait for that one load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from mlxd.fleet.catalog import Catalog, ModelCard
from mlxd.fleet.workers import (
    CRASH_LOOP_COUNT,
    CRASH_LOOP_WINDOW_S,
    Launch,
    LoadFailed,
    Worker,
)
from mlxd.service.autoconf import ModelPlan, plan_model
from mlxd.service.config import DEFAULT_MAX_BATCH_SIZE, IDLE_NEVER, OPTIONS, Config, Option
from mlxd.service.modelspec import FRONT_END_FIELDS, FRONT_END_PER_MODEL
from mlxd.transport.errors import UNAVAILABLE, HttpError

log = logging.getLogger(__name__)

BUSY_RETRY_AFTER_S = 2  # when every loaded model is busy, a slot may free up this soon
IDLE_CHECK_MAX_S = 1.0  # the idle timer's resolution (never coarser than a quarter of idle-unload)


def _unavailable(message: str, code: str, retry_after: float | None = None) -> HttpError:
    headers = (("Retry-After", str(math.ceil(retry_after))),) if retry_after else ()
    return HttpError(503, UNAVAILABLE, message, param="model", code=code, headers=headers)


@dataclass(frozen=True)
class Limits:
    max_loaded: int | None  # None: no count limit
    budget: int | None  # bytes of memory_limit all loaded models may add up to; None: none


class Pool:
    def __init__(
        self,
        catalog: Catalog,
        config: Config,
        limits: Limits,
        launch: Launch,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.catalog = catalog
        self.config = config
        self.limits = limits
        self.launch = launch
        self.on_change = on_change
        self.workers: dict[str, Worker] = {}
        self._wake = asyncio.Event()  # the idle sweep looks again (a request just ended)
        self._unloads: set[asyncio.Task] = set()

    # ----- workers, one per model, made on first use -----

    def worker(self, card: ModelCard) -> Worker:
        w = self.workers.get(card.id)
        if w is None:
            settings = model_settings(self.config, card)
            plan = model_plan(self.config, card)
            forwarded = {k: v for k, v in settings.items() if k not in FRONT_END_PER_MODEL}
            # The front end waited for running requests already: a worker told to stop stops now.
            forwarded |= {"memory_limit": plan.memory_limit, "shutdown_timeout": 0.0}
            forwarded |= {"log_format": "json"}  # read back by workers.py
            args = worker_args(forwarded)
            w = Worker(card, plan, args, self.launch, len(self.workers), self.on_change)
            self.workers[card.id] = w
        return w

    def idle_limit(self, w: Worker) -> float:
        value = w.card.settings.get("idle_unload", self.config.idle_unload)
        return float(value)  # type: ignore[arg-type]

    def all(self) -> list[Worker]:
        return [self.worker(card) for card in self.catalog]

    # ----- requests -----

    @contextlib.asynccontextmanager
    async def use(self, card: ModelCard) -> AsyncIterator[Worker]:
        """The model's worker, loaded, counted busy while the block runs."""
        w = self.worker(card)
        w.waiting += 1  # not idle: the idle sweep and LRU leave it alone while we wait
        try:
            await self.ready(w)
        finally:
            w.waiting -= 1
        w.use()
        try:
            yield w
        finally:
            w.release()
            self._wake.set()

    async def ready(self, w: Worker, *, forced: bool = False) -> None:
        """Return once ``w`` is ready; start it (making room) or wait for its load if need be."""
        while w.state != "ready":
            if w.loading is not None:
                try:
                    await asyncio.shield(w.loading)  # a client that leaves stops only its wait
                except LoadFailed as exc:
                    raise _unavailable(
                        f"the model {w.id!r} could not be loaded: its worker {exc}",
                        "model_load_failed",
                    ) from None
            elif w.state == "unloading":
                await w.stopped()
                if w.state == "unloading":  # gone already, its stop not yet seen: it is out
                    w.set_state("unloaded")
            else:
                self._start(w, forced)

    def _start(self, w: Worker, forced: bool) -> None:
        """Decide, with no await in between: the crash loop, the room, then mark it loading."""
        if forced:
            w.forgive()
        left = w.crash_loop_left()
        if left:
            raise _unavailable(
                f"the model {w.id!r} is in a crash loop: its worker failed {CRASH_LOOP_COUNT} "
                f"times within {CRASH_LOOP_WINDOW_S:g}s (last: {w.last_error}); it is not "
                f"restarted for {math.ceil(left)}s (POST /admin/load restarts it now)",
                "crash_loop",
                left,
            )
        victims = self._make_room(w)
        for victim in victims:
            victim.set_state("unloading")
        w.set_state("loading")
        w.loading = asyncio.ensure_future(self._load(w, victims))

    async def _load(self, w: Worker, victims: list[Worker]) -> None:
        try:
            for victim in victims:
                log.info("unloading %s (least recently used) to make room for %s", victim.id, w.id)
            await asyncio.gather(*(v.stop() for v in victims))
            await asyncio.gather(
                *(x.stopped() for x in self.workers.values() if x.state == "unloading")
            )
            await w.start()
        finally:
            w.loading = None

    def _make_room(self, w: Worker) -> list[Worker]:
        """The idle models to unload (least recently used first) so that ``w`` fits, or the 503
        that says why it cannot."""
        need, budget, most = w.plan.memory_limit, self.limits.budget, self.limits.max_loaded
        if budget is not None and need > budget:
            raise _unavailable(
                f"the model {w.id!r} needs about {need / 2**30:.1f} GiB (weights, prompt cache "
                f"and KV room), more than the memory budget of {budget / 2**30:.1f} GiB (raise "
                "--memory-budget, or give the model a smaller memory-limit)",
                "insufficient_memory",
            )
        held = [x for x in self.workers.values() if x is not w and x.state in ("loading", "ready")]
        idle = sorted((x for x in held if x.state == "ready" and x.idle_now), key=_lru)
        victims: list[Worker] = []

        def fits() -> bool:
            kept = [x for x in held if x not in victims]
            count_ok = most is None or len(kept) < most
            return count_ok and (
                budget is None or sum(x.plan.memory_limit for x in kept) + need <= budget
            )

        while not fits():
            if not idle:
                busy = ", ".join(x.id for x in held)
                limit = f"--max-loaded {most}" if most is not None else "the memory budget"
                raise _unavailable(
                    f"cannot load the model {w.id!r} now: {limit} is taken by models that are "
                    f"all busy or loading ({busy}); retry when one is done",
                    "models_busy",
                    BUSY_RETRY_AFTER_S,
                )
            victims.append(idle.pop(0))
        return victims

    # ----- unloading -----

    async def unload(self, w: Worker, timeout: float) -> dict:
        """Unload ``w``: wait up to ``timeout`` for its running requests, then stop it (what still
        runs ends with a clean error). New requests for it wait, then load it again."""
        if w.loading is not None:
            with contextlib.suppress(LoadFailed):
                await asyncio.shield(w.loading)
        if w.state not in ("ready", "unloading"):
            return {"model": w.id, "state": w.state, "waited_for": 0, "cancelled": 0}
        running = w.in_flight
        w.set_state("unloading")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w.idle.wait(), timeout)
        cancelled = w.in_flight
        if cancelled:
            log.warning("unloading %s: cutting %d running request(s) short", w.id, cancelled)
        await w.stop()
        return {"model": w.id, "state": w.state, "waited_for": running, "cancelled": cancelled}

    async def sweep(self) -> None:
        """Until cancelled: unload models idle for longer than their --idle-unload."""
        while True:
            now, wait = time.monotonic(), IDLE_CHECK_MAX_S
            for w in list(self.workers.values()):
                limit = self.idle_limit(w)
                if limit == IDLE_NEVER or w.state != "ready" or not w.idle_now:
                    continue
                left = w.last_used + limit - now
                if left <= 0:
                    log.info("unloading %s: idle for %gs", w.id, limit)
                    w.set_state("unloading")  # now: the next look must not pick it again
                    task = asyncio.ensure_future(self.unload(w, 0.0))
                    self._unloads.add(task)
                    task.add_done_callback(self._unloads.discard)
                else:
                    wait = min(wait, max(left, limit / 4))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def close(self) -> None:
        """Stop every worker (the front end is shutting down)."""
        for w in self.workers.values():
            if w.loading is not None:
                w.loading.cancel()
        await asyncio.gather(*(w.stop() for w in self.workers.values()), return_exceptions=True)


def model_settings(config: Config, card: ModelCard) -> dict[str, object]:
    """A model's effective worker settings: the server's, then its own from ``models``."""
    own = {f: v for f, v in vars(config).items() if f not in FRONT_END_FIELDS}
    return {**own, **card.settings}


def model_plan(config: Config, card: ModelCard) -> ModelPlan:
    s = Config(**model_settings(config, card))  # type: ignore[arg-type]
    batch = s.max_batch_size or DEFAULT_MAX_BATCH_SIZE  # auto: the worker picks; plan for this
    return plan_model(card.path, batch, s.prompt_cache_bytes, s.memory_limit)


def worker_args(values: dict[str, object]) -> list[str]:
    """Command-line flags that give a worker these settings (Config field -> value); values
    equal to the built-in default are left out."""
    defaults = Config()
    args: list[str] = []
    for opt in OPTIONS:
        if opt.field not in values or values[opt.field] == getattr(defaults, opt.field):
            continue
        value = values[opt.field]
        if opt.kind == "bool":
            args.append(f"--{opt.flag}" if value else f"--no-{opt.flag}")
        elif value is None:
            args += [f"--{opt.flag}", _unset_word(opt)]
        elif isinstance(value, tuple):
            args += [f"--{opt.flag}", ",".join(map(str, value))]
        else:
            args += [f"--{opt.flag}", str(value)]
    return args


def _unset_word(opt: Option) -> str:
    """The word an optional setting's parser reads as None ("none" or "auto")."""
    word = getattr(opt.parse, "unset_word", None)
    if word is None:
        raise ValueError(f"--{opt.flag} cannot be unset on a command line")
    return word


def _lru(w: Worker) -> float:
    return w.last_used
