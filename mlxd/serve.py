"""Putting it together: listen, load the model, warm up, serve until a signal, shut down cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from . import __version__, models
from .api import ROUTES, App, Defaults
from .config import Config
from .engine import Engine
from .server import Server

log = logging.getLogger("mlxd")


def run(config: Config) -> int:
    try:
        return asyncio.run(serve(config))
    except KeyboardInterrupt:   # a second Ctrl-C: leave at once
        return 130


async def serve(config: Config, *, on_listening=None, stop: asyncio.Event | None = None) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set). ``on_listening(addresses)`` lets a caller
    learn a port-0 address."""
    app = App(name=models.served_name(config.model),
              defaults=Defaults(config.max_tokens, config.temperature, config.top_p))
    server = Server(app, ROUTES, max_body_bytes=config.max_body_bytes)
    try:
        addresses = await server.start(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc.strerror or exc)
        return 1
    for host, port in addresses:
        log.info("mlxd %s listening on http://%s:%d (loading %s)", __version__, host, port,
                 config.model)
    if on_listening is not None:
        on_listening(addresses)
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    loading = asyncio.create_task(_load(app, config))
    await asyncio.wait({loading, asyncio.create_task(stop.wait())},
                       return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if loading.done() and loading.exception() is not None:
        log.error("%s", loading.exception())
        code = 1
    elif loading.done():
        await stop.wait()
    log.info("shutting down")
    await server.shutdown(config.shutdown_timeout)
    if app.engine is not None:
        await asyncio.to_thread(app.engine.shutdown, 5.0)
    loading.cancel()
    log.info("stopped")
    return code


async def _load(app: App, config: Config) -> None:
    loaded = await asyncio.to_thread(models.load, config.model)
    log.info("loaded %s (%s, context %d) in %.2fs", loaded.name, loaded.format,
             loaded.context_length, loaded.load_seconds)
    engine = Engine(loaded.model, loaded.tokenizer)
    app.loaded, app.engine = loaded, engine
    engine.start()
    while not await asyncio.to_thread(engine.ready.wait, 0.5):
        if not engine.alive:
            raise models.ModelLoadError("the model failed its warm-up generation (see above)")
    log.info("ready: serving %s", loaded.name)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def first(signame: str) -> None:
        log.info("%s received", signame)
        stop.set()
        # A second SIGINT means "now": restore the default handler (KeyboardInterrupt).
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, first, sig.name)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests), or Windows
            pass
