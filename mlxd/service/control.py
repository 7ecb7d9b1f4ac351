"""``mlxd --status`` and ``mlxd --stop``: find the running mlxd, say how it is, stop it.

A server is found by the PID file its settings name (``--pid-file``, or the one per ``--port``),
by ``--pid``, or, with neither given anywhere, among every running mlxd of this user (the registry
in daemon.py, which each server writes beside its own PID file). Stdlib only: both answer in a
blink; only a running server's /stats is asked (over loopback, briefly) for its tokens per second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlxd.service import daemon
from mlxd.service.daemon import EXIT_NOT_RUNNING, Probe

STOP_POLL_S = 0.05
STOP_MARGIN_S = 10.0  # --stop waits the server's own shutdown timeout plus this
DEFAULT_GRACE_S = 30.0  # a PID file without its shutdown timeout (written by an older mlxd)
EXIT_USAGE = 2  # several run and none was named
STATS_TIMEOUT_S = 1.0  # /stats is answered by the event loop, never behind a generation step
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # bound -> reachable


@dataclass(frozen=True)
class Target:
    """Which server the command means; all None: every running one of this user."""

    pid_file: Path | None = None  # given a port or a PID file (flag, env or config file)
    port: int | None = None  # the port given, to find a server whose PID file is elsewhere
    pid: int | None = None  # --pid
    api_key: str | None = None  # for /stats when the server wants one


def command(stop: bool, target: Target, timeout: float | None = None) -> int:
    """--stop (``stop``) or --status for ``target``: the exit status of either."""
    if target.pid is not None:
        chosen = [p for p in running() if p.pid == target.pid]
        if not chosen:
            print(f"mlxd: no running mlxd has pid {target.pid}")
            _list_others()
            return EXIT_NOT_RUNNING
    elif target.pid_file is not None:
        found = daemon.probe(target.pid_file)
        chosen = [found] if found.running else [p for p in running() if _means(p, target)]
        if not chosen:
            return _not_running(found, stop)
    else:
        chosen = running()
        if not chosen:
            print(f"mlxd is not running (none registered in {daemon.registry_dir()})")
            return EXIT_NOT_RUNNING
    if not stop:
        show = _show_one if len(chosen) == 1 else _show_table
        show(chosen, target.api_key)
        return 0
    if len(chosen) > 1:
        picked = _ask_which(chosen, target.api_key)
        if picked is None:
            return EXIT_USAGE
        chosen = [picked]
    return stop_one(chosen[0], timeout)


def running() -> list[Probe]:
    """Every running mlxd of this user: the registry, and default per-port PID files (a server
    that could not register still has one), each once, by port. Never a scan of all processes:
    what a command may stop without being told which must be what this user's servers
    registered (and a test's registry is its own)."""
    found = {p.pid: p for p in daemon.registered()}
    for path in sorted(daemon.runtime_dir().glob("mlxd-*.pid")):
        p = daemon.probe(path)
        if p.running and p.pid not in found:
            found[p.pid] = p
    return sorted(found.values(), key=_by_port)


def _by_port(p: Probe) -> tuple[int, int]:
    port = p.info.get("port")
    return (port if isinstance(port, int) else 0, p.pid or 0)


def _means(found: Probe, target: Target) -> bool:
    """Whether a registered server is the one a port or a PID file names."""
    if target.port is not None and found.info.get("port") == target.port:
        return True
    return str(found.info.get("pid_file")) == str(target.pid_file)


def _not_running(found: Probe, stop: bool) -> int:
    if found.state == "stale" and stop:
        found.path.unlink(missing_ok=True)
        print(f"mlxd: not running; removed stale PID file {found.path} ({found.why})")
    elif found.state == "stale":
        print(f"mlxd is not running (stale PID file {found.path}: {found.why})")
    else:
        print(f"mlxd is not running (no PID file {found.path})")
    _list_others()
    return EXIT_NOT_RUNNING


def _list_others() -> None:
    others = running()
    if others:
        print("running elsewhere:")
        for p in others:
            print(f"  pid {p.pid}  {p.info.get('url', '?')}  {p.info.get('model', '?')}")


# ----- what --status prints -----


def _uptime(started: object) -> str:
    if not isinstance(started, (int, float)):
        return "?"
    s = int(max(0, time.time() - started))
    d, h, m = s // 86400, s // 3600 % 24, s // 60 % 60
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m {s % 60}s"


def rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid``: /proc/PID/status on Linux, ``ps -o rss=`` elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        out = subprocess.run(
            ["ps", "-o", "rss=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return int(out) * 1024 if out.isdigit() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def tokens_per_second(info: dict, api_key: str | None) -> str:
    """The server's recent tokens per second from its /stats: a number, ``-`` before any
    request, ``?`` when it cannot be asked (another host, a key it wants, loading)."""
    import http.client  # only when a server runs: --stop/--status with none stay quick

    host, port = info.get("host"), info.get("port")
    if not isinstance(host, str) or not isinstance(port, int):
        return "?"
    conn = http.client.HTTPConnection(WILDCARD_HOSTS.get(host, host), port, timeout=STATS_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        conn.request("GET", "/stats", headers=headers)
        resp = conn.getresponse()
        body = json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        body = None
    finally:
        conn.close()
    if not isinstance(body, dict):
        return "?"
    recent = (body.get("tokens_per_second") or {}).get("recent_average")
    return f"{recent:.1f}" if isinstance(recent, (int, float)) else "-"


def _show_one(found: list[Probe], api_key: str | None) -> None:
    p = found[0]
    info = p.info
    print(f"mlxd is running: pid {p.pid}")
    rows = (
        ("address", info.get("url", "?")),
        ("model", info.get("model", "?")),
        ("state", info.get("state", "?")),
        ("memory", _human(rss_bytes(p.pid)) if p.pid else "?"),
        ("tok/s", tokens_per_second(info, api_key)),
        ("uptime", _uptime(info.get("started"))),
        ("version", info.get("version", "?")),
        ("pid file", p.path),
    )
    for label, value in rows:
        print(f"  {label + ':':9} {value}")
    models = info.get("models")
    if isinstance(models, dict):  # a front end of --models: each model's state
        print(f"  models:   {len(models)}")
        for model_id, state in models.items():
            print(f"    {model_id}: {state}")


def _table(found: list[Probe], api_key: str | None, numbered: bool = False) -> list[str]:
    rows: list[tuple[str, ...]] = [
        ("", "PID", "URL", "STATE", "MEMORY", "TOK/S", "UPTIME", "MODEL")
    ]
    for i, p in enumerate(found, 1):
        info = p.info
        rows.append(
            (
                str(i),
                str(p.pid),
                str(info.get("url", "?")),
                str(info.get("state", "?")),
                _human(rss_bytes(p.pid)) if p.pid else "?",
                tokens_per_second(info, api_key),
                _uptime(info.get("started")),
                str(info.get("model", "?")),
            )
        )
    if not numbered:
        rows = [row[1:] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    # every column padded to its widest cell but the last (the model path), which runs on
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


def _show_table(found: list[Probe], api_key: str | None) -> None:
    print(f"{len(found)} mlxd are running:")
    for line in _table(found, api_key):
        print(f"  {line}")


def _ask_which(found: list[Probe], api_key: str | None) -> Probe | None:
    """Several run: on a terminal, ask which to stop; elsewhere, list them and say how to name
    one (a script must not stop a server by guessing)."""
    print(f"{len(found)} mlxd are running:")
    for line in _table(found, api_key, numbered=True):
        print(f"  {line}")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("mlxd: name the one to stop: mlxd --stop --port N, or --pid PID", file=sys.stderr)
        return None
    try:
        answer = input(f"stop which? (1-{len(found)} or a pid; Enter for none) ").strip()
    except EOFError:
        answer = ""
    by_answer = {str(i): p for i, p in enumerate(found, 1)} | {str(p.pid): p for p in found}
    if answer not in by_answer:
        print("mlxd: nothing stopped")
        return None
    return by_answer[answer]


# ----- --stop -----


def stop_one(found: Probe, timeout: float | None) -> int:
    """SIGTERM a running mlxd and wait for it: 0 stopped, 1 it would not stop (or may not be
    signalled)."""
    assert found.pid is not None
    if timeout is None:
        grace = found.info.get("shutdown_timeout")
        timeout = (grace if isinstance(grace, (int, float)) else DEFAULT_GRACE_S) + STOP_MARGIN_S
    try:
        os.kill(found.pid, signal.SIGTERM)
    except PermissionError:
        print(f"mlxd: cannot signal pid {found.pid}: permission denied", file=sys.stderr)
        return 1
    except ProcessLookupError:
        pass
    start = time.monotonic()
    while daemon.is_mlxd(found.pid):
        if time.monotonic() - start > timeout:
            print(f"mlxd: pid {found.pid} did not stop within {timeout:g}s", file=sys.stderr)
            return 1
        time.sleep(STOP_POLL_S)
    print(
        f"mlxd: stopped pid {found.pid} ({found.info.get('url', found.path)}) in "
        f"{time.monotonic() - start:.1f}s"
    )
    return 0
