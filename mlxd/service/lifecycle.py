"""What every mlxd server does around serving, one model or several: bind errors in words, the
PID file, the open-address warning, SIGTERM/SIGINT, and a worker's watch on its parent.
Stdlib only: the front end of ``--models`` (fleet/front.py) shares it with service/run.py
without importing mlx."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import signal
import time

from mlxd.service import daemon, logs
from mlxd.service.config import Config

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
PARENT_POLL_S = 1.0  # how often a worker checks that its front end is still there


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def where(config: Config, addresses) -> str:
    """Where a server listens, for its log: a URL, or the Unix socket."""
    if config.unix_socket:
        return f"unix:{config.unix_socket}"
    return ", ".join(url(host, port) for host, port in addresses)


def bind_error(config: Config, exc: OSError) -> str:
    place = config.unix_socket or f"{config.host}:{config.port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {place}: the port is already in use by another program "
            f"(pick another with --port)"
        )
    if exc.errno == errno.EACCES:
        return f"cannot listen on {place}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {place}: {exc.strerror or exc}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(config: Config) -> None:
    if not config.api_keys and not config.unix_socket and not is_loopback(config.host):
        log.warning(
            "listening on %s without an API key: anyone who can reach this address can "
            "use the model (set --api-key or --api-key-file)",
            config.host,
        )


def write_pid_file(config: Config, addresses, **info) -> daemon.PidFile | None:
    """The PID file (host, port, url, model, start time, state "loading", and ``info``), or None
    when none is wanted or it cannot be written (logged)."""
    if not config.pid_file:
        return None
    host, port = addresses[0]
    path = daemon.pid_path(config.pid_file, port)
    pid_file = daemon.PidFile(
        path,
        registry=daemon.registry_dir(),
        info={
            "host": host,
            "port": port,
            "url": url(host, port),
            "model": config.model,
            "started": time.time(),
            "state": "loading",
            "shutdown_timeout": config.shutdown_timeout,
            **info,
        },
    )
    try:
        pid_file.write()
    except OSError as exc:
        log.error("cannot write the PID file %s: %s", path, exc.strerror or exc)
        return None
    return pid_file


def update_pid_file(pid_file: daemon.PidFile | None, **changes) -> None:
    if pid_file is None:
        return
    try:
        pid_file.write(**changes)
    except OSError as exc:
        log.warning("cannot update the PID file: %s", exc)


def install_signal_handlers(stop: asyncio.Event, pid_file: daemon.PidFile | None) -> None:
    """The first SIGTERM/SIGINT shuts down gracefully; a second one leaves at once."""
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def first(signame: str) -> None:
        if received:  # a second signal the loop took before the handlers below were swapped
            second(signal.Signals[signame], None)
            return
        received.append(signame)
        log.info("%s received: finishing in-flight requests (again to quit now)", signame)
        stop.set()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, second)

    def second(signum, _frame) -> None:
        log.warning("%s received again: exiting now", signal.Signals(signum).name)
        if pid_file is not None:
            pid_file.remove()
        logs.flush()
        os._exit(EXIT_INTERRUPTED)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
            loop.add_signal_handler(sig, first, sig.name)


async def stop_when_orphaned(stop: asyncio.Event) -> None:
    """A worker of ``--models`` stops when its front end is gone (killed with SIGKILL, say): it
    is then re-parented, and nobody else would ever send it a request or a SIGTERM."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            log.warning("the process that started this server (pid %d) is gone: stopping", parent)
            stop.set()
