"""``mlxd --models DIR``: the front end. It listens, finds the models, plans their memory, starts
the workers it is asked to preload, serves until a signal, then stops every worker.

It never imports mlx: each model is loaded by its own worker process (fleet/workers.py), so a
crash takes down one model only and unloading a model returns all of its memory.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from pathlib import Path

from mlxd import __version__
from mlxd.fleet.catalog import Catalog, CatalogError
from mlxd.fleet.pool import Limits, Pool, model_plan
from mlxd.fleet.router import PUBLIC_PATHS, ROUTES, Front
from mlxd.fleet.workers import Launch, worker_command, worker_env
from mlxd.models import units
from mlxd.service import autoconf, lifecycle, logs
from mlxd.service.config import Config
from mlxd.service.lifecycle import EXIT_INTERRUPTED
from mlxd.transport.server import Server, ServerSettings

log = logging.getLogger(__name__)

PRELOAD_ALL = "*"


def run(config: Config, *, on_listening=None, on_ready=None) -> int:
    try:
        code = asyncio.run(serve(config, on_listening=on_listening, on_ready=on_ready))
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    logs.flush()
    return code


def auto_settings(config: Config) -> dict:
    """What auto-configuration picks (and what it reads), for --print-config and the start log."""
    device = autoconf.machine()
    out: dict[str, object] = {"device_memory": device.memory, "device_memory_source": device.source}
    if not config.models:
        if config.model and Path(config.model).exists():
            out["model_weights_bytes"] = autoconf.weights_bytes(config.model)
        return out
    budget, how = autoconf.memory_budget(config.memory_budget, device)
    out |= {"memory_budget": budget, "memory_budget_source": how}
    try:
        catalog = Catalog(config.models)
    except CatalogError as exc:
        return out | {"models_error": str(exc)}
    out["models"] = {card.id: model_plan(config, card).to_json() for card in catalog}
    return out


def _preload_ids(config: Config, catalog: Catalog) -> list[str]:
    if PRELOAD_ALL in config.preload:
        return [card.id for card in catalog]
    unknown = [name for name in config.preload if catalog.find(name) is None]
    if unknown:
        raise CatalogError(f"--preload names unknown models: {', '.join(unknown)}")
    return list(dict.fromkeys(catalog.find(name).id for name in config.preload))  # type: ignore[union-attr]


def _log_plan(pool: Pool, budget: int | None, how: str) -> None:
    most = pool.limits.max_loaded
    log.info(
        "memory budget %s (%s); at most %s loaded at once",
        units.human(budget),
        how,
        most if most is not None else "as many as fit",
    )
    for w in pool.all():
        p = w.plan
        log.info(
            "model %s: weights %s + prompt cache %s + KV room %s -> worker memory limit %s (%s)",
            w.id,
            units.human(p.weights_bytes),
            units.human(p.prompt_cache_bytes),
            units.human(p.kv_bytes),
            units.human(p.memory_limit),
            p.source,
        )


async def serve(
    config: Config,
    *,
    on_listening=None,
    on_ready=None,
    stop: asyncio.Event | None = None,
    worker: list[str] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``); the hooks as in service/run.py's ``run_async``
    (``on_ready`` once the preloaded models are ready). ``worker``: the command that starts a
    worker (default: this mlxd; tests start a stand-in)."""
    try:
        catalog = Catalog(config.models)
        preload = _preload_ids(config, catalog)
    except CatalogError as exc:
        log.error("%s", exc)
        return 1
    socket_dir = tempfile.mkdtemp(prefix="mlxd-")  # 0700: only we reach the workers
    front, server = _build(
        config, catalog, Launch(tuple(worker or worker_command()), socket_dir, worker_env())
    )
    try:
        return await _serve(config, front, server, preload, stop, on_listening, on_ready)
    finally:
        await front.pool.close()
        shutil.rmtree(socket_dir, ignore_errors=True)


def _build(config: Config, catalog: Catalog, launch: Launch) -> tuple[Front, Server]:
    budget, how = autoconf.memory_budget(config.memory_budget, autoconf.machine())
    pool = Pool(catalog, config, Limits(config.max_loaded, budget), launch)
    settings = {
        "memory_budget": budget,
        "memory_budget_source": how,
        "max_loaded": config.max_loaded,
    }
    front = Front(catalog, pool, settings)
    server_settings = ServerSettings(
        max_body_bytes=config.max_body_bytes,
        api_keys=config.api_keys,
        admin_keys=config.admin_keys,
        auth_health=config.auth_health,
        cors_origins=config.cors_origins,
    )
    server = Server(
        front, ROUTES, server_settings, public_paths=PUBLIC_PATHS, metrics=front.metrics
    )
    return front, server


async def _serve(
    config, front: Front, server: Server, preload, stop, on_listening, on_ready
) -> int:
    pool = front.pool
    try:
        addresses = await server.start(config.host, config.port)
    except OSError as exc:
        log.error("%s", lifecycle.bind_error(config, exc))
        return 1

    def states() -> dict[str, str]:
        return {w.id: w.state for w in pool.workers.values()}

    dirs = " ".join(x for x in config.models if isinstance(x, str))
    pid_file = lifecycle.write_pid_file(
        config, addresses, model=f"--models {dirs}".strip(), models=states()
    )
    if config.pid_file and pid_file is None:
        await server.shutdown(0)
        return 1
    pool.on_change = lambda: lifecycle.update_pid_file(pid_file, models=states())
    stop = stop or asyncio.Event()
    lifecycle.install_signal_handlers(stop, pid_file)
    log.info(
        "mlxd %s listening on %s (%d models: %s)",
        __version__,
        lifecycle.where(config, addresses),
        len(front.catalog),
        ", ".join(front.ids()),
    )
    _log_plan(pool, pool.limits.budget, front.settings["memory_budget_source"])
    lifecycle.warn_if_open(config)
    if on_listening is not None:
        on_listening(addresses)
    sweep = asyncio.create_task(pool.sweep())
    try:
        await _preload(pool, preload, stop)
        lifecycle.update_pid_file(pid_file, state="ready", models=states())
        if on_ready is not None and not stop.is_set():
            on_ready()
        await stop.wait()
        await _shut_down(config, server, pool)
        return 0
    finally:
        sweep.cancel()
        if pid_file is not None:
            pid_file.remove()


async def _shut_down(config: Config, server: Server, pool: Pool) -> None:
    """In-flight requests get the shutdown grace, then every worker is stopped."""
    log.info("shutting down")
    await server.shutdown(config.shutdown_timeout)
    await pool.close()
    log.info("stopped")


async def _preload(pool: Pool, ids: list[str], stop: asyncio.Event) -> None:
    """Load ``ids`` one after the other (in parallel they would make room for each other)."""
    for model_id in ids:
        if stop.is_set():
            return
        card = pool.catalog.find(model_id)
        assert card is not None
        loading = asyncio.ensure_future(pool.ready(pool.worker(card)))
        waiting = asyncio.ensure_future(stop.wait())
        await asyncio.wait({loading, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if not loading.done():
            loading.cancel()
        elif loading.exception() is not None:
            log.error("preloading %s failed: %s", model_id, loading.exception())
