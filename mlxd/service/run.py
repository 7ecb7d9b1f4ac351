"""Putting it together: listen, write the PID file, load the model, warm up, serve until a signal,
shut down cleanly, remove the PID file. What each layer is built with (the App, the Server, the
engine's settings, the weights served) comes from ``Config`` through wiring.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from mlxd import STARTED, __version__
from mlxd.api.app import App
from mlxd.engine.group import Lockstep
from mlxd.engine.loop import Engine
from mlxd.models import device, loader, shard
from mlxd.models.group import Group, GroupError, join
from mlxd.models.locate import ModelNotFound, locate
from mlxd.service import lifecycle, logs, ranks, wiring
from mlxd.service.config import IDLE_NEVER, Config
from mlxd.service.lifecycle import EXIT_INTERRUPTED
from mlxd.service.residency import Residency
from mlxd.service.startup import Startup
from mlxd.transport.server import Server

log = logging.getLogger(__name__)

EXIT_ENGINE_FAILED = 70  # sysexits' EX_SOFTWARE: the generation thread died; restart us

# Makes the engine from (model, tokenizer, settings=..., on_failure=...): the seam tests use to
# wrap the model or inject failures, instead of swapping module globals.
EngineFactory = Callable[..., Engine]
LOADER_THREAD = "mlxd-load"


def run(config: Config, *, on_listening=None, on_ready=None) -> int:
    group = None
    if config.backend is not None:
        try:
            group = join_group(config)
        except GroupError as exc:
            log.error("%s", exc)
            return 1
        if not group.leader:
            from mlxd.service.follower import follow

            code = follow(config, group)
            logs.flush()
            os._exit(code)  # a rank's collectives may hold threads that never return
    try:
        code = asyncio.run(
            run_async(
                config, on_listening=on_listening, on_ready=on_ready, started=STARTED, group=group
            )
        )
    except KeyboardInterrupt:  # Ctrl-C before the handlers were in place
        code = EXIT_INTERRUPTED
    logs.flush()
    if group is not None or any(
        t.name == LOADER_THREAD and t.is_alive() for t in threading.enumerate()
    ):
        os._exit(code)  # stopped mid-load, or a group's collectives may hold threads
    return code


def join_group(config: Config) -> Group:
    """Join the group ``config.backend`` names, as big as the launcher made it."""
    assert config.backend is not None
    return join(
        config.backend,
        pipeline=config.pipeline,
        expected=ranks.expected_size(config.backend, os.environ),
        step_timeout=config.step_timeout,
    )


async def run_async(
    config: Config,
    *,
    on_listening=None,
    on_ready=None,
    stop: asyncio.Event | None = None,
    engine_factory: EngineFactory | None = None,
    started: float | None = None,
    group: Group | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set), or until the generation thread dies
    (then exit EXIT_ENGINE_FAILED after the shutdown grace). ``on_listening(addresses)`` runs
    once the socket is bound and the PID file written (it lets a caller learn a port-0 address);
    ``on_ready()`` once the model has warmed up. ``started`` (monotonic): when the process
    began, for the start-up summary. ``group``: this server is rank 0 of it."""
    startup = Startup(began=started)
    try:  # a model that is not there is said before listening, not after
        found = locate(config.model or "")
    except ModelNotFound as exc:
        log.error("%s", exc)
        return 1
    name = config.served_model_name or found.name
    config = dataclasses.replace(config, model=str(found.path), served_model_name=name)
    app = wiring.app_for(config)
    factory, failed = engine_factory or Engine, asyncio.Event()  # failed: the thread died

    def load(phases: Startup | None = None):  # again after an idle unload: phases of its own
        return _load(app, config, factory, failed, phases or Startup(), group)

    residency = None
    if config.idle_unload != IDLE_NEVER:
        residency = Residency(app, config.idle_unload, load)
    server = wiring.server_for(config, app, residency)
    try:
        if config.unix_socket:
            addresses = await server.start_unix(config.unix_socket)
        else:
            addresses = await server.start(config.host, config.port)
    except OSError as exc:
        log.error("%s", lifecycle.bind_error(config, exc))
        return 1
    pid_file = lifecycle.write_pid_file(config, addresses)
    if config.pid_file and pid_file is None:
        await server.shutdown(0)
        return 1
    if residency is not None:
        residency.on_state = lambda state: lifecycle.update_pid_file(pid_file, state=state)
    stop = stop or asyncio.Event()
    lifecycle.install_signal_handlers(stop, pid_file)
    log.info(
        "mlxd %s listening on %s (loading %s)",
        __version__,
        lifecycle.where(config, addresses),
        config.model,
    )
    lifecycle.warn_if_open(config)
    if on_listening is not None:
        on_listening(addresses)

    def ready() -> None:
        lifecycle.update_pid_file(pid_file, state="ready")
        if on_ready is not None:
            on_ready()

    orphan = asyncio.create_task(lifecycle.stop_when_orphaned(stop)) if config.unix_socket else None
    try:
        return await _lifecycle(config, app, server, stop, ready, load(startup), failed, residency)
    finally:
        if orphan is not None:
            orphan.cancel()
        if pid_file is not None:
            pid_file.remove()


async def _lifecycle(
    config: Config,
    app: App,
    server: Server,
    stop: asyncio.Event,
    ready: Callable[[], None],
    first_load: Coroutine[Any, Any, None],
    failed: asyncio.Event,
    residency: Residency | None,
) -> int:
    """Load the model while serving what needs no model; then serve until ``stop`` or until
    the engine fails (``failed``); shut down."""
    loading = asyncio.create_task(first_load)
    await _first(loading, stop.wait())
    code = 0
    if loading.done() and loading.exception() is not None:
        log.error("%s", loading.exception())
        code = 1
    elif loading.done():
        ready()
        watch = asyncio.create_task(residency.watch()) if residency is not None else None
        await _first(stop.wait(), failed.wait())
        if watch is not None:
            watch.cancel()
        if failed.is_set():
            log.error("exiting with %d: %s", EXIT_ENGINE_FAILED, app.failure)
            code = EXIT_ENGINE_FAILED
    log.info("shutting down")
    await server.shutdown(config.shutdown_timeout)
    if app.engine is not None:
        await asyncio.to_thread(app.engine.shutdown, 5.0)
    loading.cancel()
    log.info("stopped")
    return code


async def _first(*aws) -> None:
    """Wait until the first of ``aws`` is done; cancel the rest (but never a Task passed in)."""
    tasks = [a if isinstance(a, asyncio.Task) else asyncio.ensure_future(a) for a in aws]
    _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        if task not in aws:
            task.cancel()


async def _load(
    app: App,
    config: Config,
    engine_factory: EngineFactory,
    failed: asyncio.Event,
    startup: Startup,
    group: Group | None,
) -> None:
    """Read the model, build what its weight policy needs, start the engine, wait for its
    warm-up; each phase logged as it begins, and on a terminal a status line below the log."""
    kernels = device.use_kernel_cache()
    if kernels:
        log.info("compiled kernels kept in %s", kernels)
    shown = startup.show()
    try:
        await _load_phases(app, config, engine_factory, failed, startup, group)
    finally:
        if shown is not None:
            shown.cancel()
            await asyncio.gather(shown, return_exceptions=True)
    log.info("ready: serving %s in %s", app.name, startup.finish())


async def _load_phases(
    app: App,
    config: Config,
    engine_factory: EngineFactory,
    failed: asyncio.Event,
    startup: Startup,
    group: Group | None,
) -> None:
    startup.phase("model read", detail=str(config.model))
    if group is None:
        loaded = await _in_thread(loader.load, config.model, config.adapter)
    else:
        loaded = await _in_thread(
            shard.load_shard,
            config.model,
            group,
            config.weights,
            config.memory_limit,
            config.tensor_sums == "float32",
        )
    log.info(
        "loaded %s (%s%s, context %d) in %.2fs",
        loaded.name,
        loaded.format,
        f", vision: {loaded.vision.model_type}" if loaded.vision else "",
        loaded.context_length,
        loaded.load_seconds,
    )
    # A group serves one copy, dense or as stored (shard.load_shard chose): a dense twin would
    # double each rank's share.
    model, kept = (
        await _in_thread(wiring.weights_for, loaded.model, config, startup)
        if group is None
        else (loaded.model, None)
    )
    loop = asyncio.get_running_loop()

    def on_failure(_reason: str) -> None:  # from the generation thread, as it dies
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting anyway
            loop.call_soon_threadsafe(failed.set)

    extra = {}
    if group is not None:
        app.group = extra["lockstep"] = Lockstep(group, loaded.tokenizer)
    engine = engine_factory(
        model,
        loaded.tokenizer,
        settings=wiring.engine_settings(config, kept, loaded, model),
        on_failure=on_failure,
        on_phase=startup.phase,
        vlm=loaded.vision.model if loaded.vision else None,
        **extra,
    )
    app.loaded, app.engine = loaded, engine
    engine.start()
    while not await asyncio.to_thread(engine.ready.wait, 0.5):
        if not engine.alive or engine.failure:
            why = engine.failure or "the model failed its warm-up generation (see above)"
            raise loader.ModelLoadError(why)


async def _in_thread(fn: Callable, *args):
    """Like ``asyncio.to_thread``, but on a daemon thread: a shutdown mid-load need not wait for
    the load to finish (asyncio.run would join its executor)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def work() -> None:
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=work, name=LOADER_THREAD, daemon=True).start()
    return await future


def _settle(future: asyncio.Future, result, exc) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
