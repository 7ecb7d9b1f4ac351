"""PID files (and their copies in the per-user registry), is-it-still-mlxd checks, and detaching
(``--daemon``). ``--status`` and ``--stop`` read them in control.py.

A PID file holds the pid alone on its first line (so ``kill $(head -n1 FILE)`` and other tools
work) and a JSON object on its second: host, port, url, model, start time, state, version.
A file whose pid is gone, or now belongs to a program that is not mlxd, is stale: it is
replaced on start and never signalled. Stdlib only: ``--stop`` must answer in a blink.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from mlxd import __version__

log = logging.getLogger(__name__)

EXIT_NOT_RUNNING = 3  # LSB's "program is not running", for --status and --stop (control.py)
PORT_PLACEHOLDER = "{port}"


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR on Linux (per user, mode 0700, emptied at logout and reboot, so old files
    cannot outlive a boot); ~/.mlxd on macOS and wherever that variable is unset."""
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if sys.platform != "darwin" and xdg and os.path.isdir(xdg):
        return Path(xdg)
    return Path.home() / ".mlxd"


def registry_dir() -> Path:
    """Where every running mlxd of this user leaves a copy of its PID file, wherever its own PID
    file is (--pid-file, MLXD_PID_FILE, a service's), so ``mlxd --status`` can list them all:
    $XDG_RUNTIME_DIR/mlxd, else ~/.mlxd/run."""
    base = runtime_dir()
    return base / "run" if base == Path.home() / ".mlxd" else base / "mlxd"


def default_pid_file(port: int) -> str:
    """Per port; with port 0 the name waits for the port actually bound."""
    return str(runtime_dir() / f"mlxd-{port or PORT_PLACEHOLDER}.pid")


def default_log_file(port: int) -> str:
    """Where a daemon logs without --log-file (not the runtime dir: logs should outlive a boot)."""
    return str(Path.home() / ".mlxd" / f"mlxd-{port}.log")


def pid_path(template: str, port: int) -> Path:
    return Path(template.replace(PORT_PLACEHOLDER, str(port))).expanduser()


# ----- is it (still) mlxd? -----


def process_argv(pid: int) -> list[str] | None:
    """The command line of a live process; None when it is gone or a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, but another user's
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:  # no procfs (macOS), or it just exited
        if Path("/proc/self").exists():
            return None
        return _ps_argv(pid)
    except PermissionError:
        return _ps_argv(pid)
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return argv or None  # a zombie has an empty command line


def _ps_argv(pid: int) -> list[str] | None:
    try:
        out = subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out or "<defunct>" in out:
        return None
    return out.split()


def looks_like_mlxd(argv: list[str]) -> bool:
    """The binary (``mlxd``, ``mlxd-VERSION-...``), the console script run by its python, or
    ``python -m mlxd``."""

    def named_mlxd(arg: str) -> bool:
        name = os.path.basename(arg)
        return name == "mlxd" or name.startswith("mlxd-")

    if not argv:
        return False
    if named_mlxd(argv[0]):
        return True
    if os.path.basename(argv[0]).startswith("python") and len(argv) > 1 and named_mlxd(argv[1]):
        return True
    return any(a == "-m" and b in ("mlxd", "mlxd.__main__") for a, b in pairwise(argv))


def is_mlxd(pid: int) -> bool:
    argv = process_argv(pid)
    return argv is not None and looks_like_mlxd(argv)


# ----- reading a PID file -----


@dataclass(frozen=True)
class Probe:
    path: Path
    state: str  # "running", "stale" or "absent"
    pid: int | None = None
    info: dict = field(default_factory=dict)
    why: str = ""  # for "stale"

    @property
    def running(self) -> bool:
        return self.state == "running"


def probe(path: Path) -> Probe:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return Probe(path, "absent")
    except OSError as exc:
        return Probe(path, "stale", why=f"unreadable: {exc.strerror}")
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        return Probe(path, "stale", why="no pid on its first line")
    try:
        info = json.loads(lines[1]) if len(lines) > 1 else {}
    except json.JSONDecodeError:
        info = {}
    argv = process_argv(pid)
    if argv is None:
        return Probe(path, "stale", pid, info, f"pid {pid} is not running")
    if not looks_like_mlxd(argv):
        return Probe(
            path, "stale", pid, info, f"pid {pid} is now {os.path.basename(argv[0])!r}, not mlxd"
        )
    return Probe(path, "running", pid, info)


def remove_stale(found: Probe) -> None:
    log.warning("removing stale PID file %s (%s)", found.path, found.why)
    try:
        found.path.unlink()
    except FileNotFoundError:
        pass


# ----- writing one -----


class PidFile:
    """The PID file of this process: written atomically, rewritten on state changes, removed
    at exit unless another process has taken it over. With a ``registry`` (``registry_dir()``),
    a copy named after the pid goes there too, naming the PID file in ``pid_file``."""

    def __init__(self, path: Path, info: dict, registry: Path | None = None) -> None:
        self.path = path
        self.info = {"pid": os.getpid(), "version": __version__, **info, "pid_file": str(path)}
        self.entry = registry / f"{os.getpid()}.pid" if registry is not None else None

    def write(self, **changes) -> None:
        self.info.update(changes)
        _write_atomically(self.path, self.info)
        if self.entry is not None:
            try:
                _write_atomically(self.entry, self.info)
            except OSError as exc:  # the PID file is what matters; the copy helps --status
                log.warning("cannot register in %s: %s", self.entry, exc)

    def remove(self) -> None:
        for path in (self.path, self.entry):
            try:
                if path is not None and _first_line(path) == str(os.getpid()):
                    path.unlink()
            except OSError:
                pass


def _write_atomically(path: Path, info: dict) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = f"{os.getpid()}\n{json.dumps(info)}\n".encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # readers see the old file or the new one, never half


def _first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").split("\n", 1)[0].strip()


def registered() -> list[Probe]:
    """Every running mlxd of this user, from the registry: the probe of its own PID file where
    that still names it, else of its registry copy. Entries of dead processes are removed."""
    found = []
    for entry in sorted(registry_dir().glob("*.pid")):
        copy = probe(entry)
        if not copy.running:
            if copy.state == "stale":
                entry.unlink(missing_ok=True)
            continue
        own = Path(str(copy.info.get("pid_file") or entry))
        primary = probe(own) if own != entry else copy
        found.append(primary if primary.running and primary.pid == copy.pid else copy)
    return found


# ----- --daemon -----


class Reporter:
    """The detached server's line back to the waiting parent: ``LISTEN``, ``READY``, ``ERROR``."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def send(self, kind: str, message: str) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, f"{kind} {message}".replace("\n", " ").encode() + b"\n")
        except OSError:  # the parent stopped waiting (Ctrl-C): carry on without it
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ReportHandler(logging.Handler):
    """Forwards error log records to the waiting parent until the server is ready."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(logging.ERROR)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        self.reporter.send("ERROR", record.getMessage())


def detach(log_file: str) -> Reporter:
    """Double fork and setsid, so no terminal or session leader is left to us; stdin from
    /dev/null, stdout/stderr to ``log_file`` (tracebacks and C-level output land there too).
    Returns in the detached process only; the original one waits for its report and exits."""
    read_fd, write_fd = os.pipe()
    _flush_std()  # or both processes would write what is still buffered
    first = os.fork()
    if first:
        os.close(write_fd)
        os.waitpid(first, 0)
        code = _wait_for_report(read_fd, log_file)
        _flush_std()
        os._exit(code)
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)  # the session leader goes; its child can never regain a terminal
    os.chdir("/")
    try:
        Path(log_file).expanduser().parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        log_fd = os.open(os.path.expanduser(log_file), flags, 0o644)
    except OSError as exc:
        Reporter(write_fd).send("ERROR", f"cannot open log file {log_file}: {exc.strerror}")
        os._exit(1)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
    return Reporter(write_fd)


def _flush_std() -> None:
    sys.stdout.flush()
    sys.stderr.flush()


def _wait_for_report(fd: int, log_file: str) -> int:
    """Print what the detached server reports; 0 once it is ready, 1 if it exits before."""
    errors = []
    try:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                kind, _, message = line.rstrip("\n").partition(" ")
                if kind == "READY":
                    print(f"mlxd: ready: {message}; logs in {log_file}", flush=True)
                    return 0
                if kind == "LISTEN":
                    print(f"mlxd: {message}", flush=True)
                elif kind == "ERROR":
                    errors.append(message)
    except KeyboardInterrupt:
        print(
            "mlxd: stopped waiting; the server goes on starting in the background", file=sys.stderr
        )
        return 130
    for message in errors or ["the server exited during start-up"]:
        print(f"mlxd: {message}", file=sys.stderr)
    print(f"mlxd: see {log_file}", file=sys.stderr)
    return 1
