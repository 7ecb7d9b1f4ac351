"""One model's worker process: spawn, ready, stop, crash detection, crash-loop back-off.

A worker is a plain single-model mlxd (the same executable, frozen or not) listening on a private
Unix socket, in its own process group (a Ctrl-C in the terminal reaches the front end alone,
which then stops its workers in order) but in the front end's session: a session of its own
would be a scheduling group of its own under Linux's autogroup, and on a busy machine that made
a worker's first token measurably later than the same model's in a single-model mlxd. It logs
JSON lines on a pipe; the front end logs them again through its own handlers, tagged with the
model, and keeps the last ones to say why a worker failed. Which worker runs when is pool.py's;
this module only runs one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlxd.fleet import upstream
from mlxd.fleet.catalog import ModelCard
from mlxd.service import imports
from mlxd.service.autoconf import ModelPlan

log = logging.getLogger(__name__)

READY_POLL_S = 0.05  # how often a starting worker's /health is asked (adds at most this to TTFT)
HEALTH_TIMEOUT_S = 2.0
STOP_KILL_AFTER_S = 10.0  # SIGTERM, then SIGKILL when a worker is still there after this
EXIT_REASON_WAIT_S = 1.0  # a broken connection waits this long for the exit that explains it
CRASH_LOOP_COUNT = 3  # this many unplanned exits ...
CRASH_LOOP_WINDOW_S = 60.0  # ... within this many seconds: no restart until the window passes
LOG_TAIL_LINES = 20
QUIET_LOGGERS = {"mlxd.access": logging.DEBUG}  # the front end logs each request itself
# Keys of a JSON log line that are no extra field (and names a LogRecord keeps for itself).
RECORD_FIELDS = {"time", "level", "logger", "message", "exc_info"} | set(
    vars(logging.makeLogRecord({}))
)


class LoadFailed(Exception):
    """The worker exited before it was ready; the message says how and why."""


def worker_command() -> list[str]:
    """How to start this same mlxd: the frozen binary itself, or this Python with ``-m mlxd``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "mlxd"]


def worker_env() -> dict[str, str]:
    """Our environment without mlxd settings: a worker's come on its command line alone (an
    ``MLXD_MODELS`` it inherited would make it a front end itself). ``MLXD_TORCH`` is no setting
    and stays (service/imports.py)."""
    prefixes = ("MLXD_", "MLX_SERVER_")
    return {
        k: v for k, v in os.environ.items() if not k.startswith(prefixes) or k == imports.OPT_OUT
    }


def exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with status {code}"


def process_rss(pid: int | None) -> int | None:
    """Resident memory of a process (Linux's /proc; None elsewhere)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError, TypeError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Launch:
    """What every worker is started with."""

    command: tuple[str, ...]  # worker_command()
    socket_dir: str  # private (0700), made by the front end
    env: dict[str, str]


class Worker:
    def __init__(
        self,
        card: ModelCard,
        plan: ModelPlan,
        args: list[str],
        launch: Launch,
        index: int,
        on_change: Callable[[], None],
    ) -> None:
        self.card = card
        self.plan = plan
        self.args = args  # settings on the worker's command line
        self.socket = os.path.join(launch.socket_dir, f"{index}.sock")  # short: sun_path limits
        self._launch = launch
        self._on_change = on_change
        # Process state.
        self.state = "unloaded"  # unloaded | loading | ready | unloading | failed
        self.proc: asyncio.subprocess.Process | None = None
        self.loaded_since: float | None = None  # wall clock
        self.last_error: str | None = None
        self.loads = 0
        self.crashes: collections.deque[float] = collections.deque(maxlen=CRASH_LOOP_COUNT)
        self._stopping = False
        self._exited = asyncio.Event()
        self._exited.set()
        # (level, message, not a log record: a traceback or C-level output)
        self._tail: collections.deque[tuple[int, str, bool]] = collections.deque(
            maxlen=LOG_TAIL_LINES
        )
        self._tasks: set[asyncio.Task] = set()
        # Use state (requests the front end is proxying here, or that wait for its load).
        self.in_flight = 0
        self.waiting = 0
        self.last_used = time.monotonic()
        self.loading: asyncio.Task | None = None  # the load that requests share
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def id(self) -> str:
        return self.card.id

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and not self._exited.is_set() else None

    def set_state(self, state: str) -> None:
        self.state = state
        self._on_change()

    # ----- use -----

    @property
    def idle_now(self) -> bool:
        return not self.in_flight and not self.waiting

    def use(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        self.last_used = time.monotonic()
        if self.in_flight == 0:
            self.idle.set()

    def crash_loop_left(self, now: float | None = None) -> float:
        """Seconds until a restart is allowed again after a crash loop; 0 when it is now."""
        now = time.monotonic() if now is None else now
        if len(self.crashes) < CRASH_LOOP_COUNT:
            return 0.0
        return max(0.0, self.crashes[0] + CRASH_LOOP_WINDOW_S - now)

    def forgive(self) -> None:
        """Forget past crashes (an explicit /admin/load tries again at once)."""
        self.crashes.clear()

    # ----- start -----

    async def start(self) -> None:
        """Spawn the worker and wait until it answers /health 200; LoadFailed if it exits first."""
        self._stopping = False
        self._tail.clear()
        self._exited.clear()
        argv = [
            *self._launch.command,
            self.card.path,
            "--unix-socket",
            self.socket,
            "--served-model-name",
            self.id,
            *self.args,
        ]
        log.info("starting a worker for %s: %s", self.id, " ".join(argv))
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=self._launch.env,
                process_group=0,  # Ctrl-C in the terminal reaches the front end alone
            )
        except OSError as exc:
            self._exited.set()
            self._fail(f"could not be started: {exc.strerror or exc}")
            raise LoadFailed(self.last_error) from None
        self._spawn(self._relay_logs(self.proc))
        self._spawn(self._watch_exit(self.proc))
        started = time.monotonic()
        if not await self._until_healthy():
            raise LoadFailed(self.last_error or "the worker exited during its start")
        self.loads += 1
        self.loaded_since = time.time()
        self.last_used = time.monotonic()
        self.set_state("ready")
        log.info("%s ready in %.2fs (worker pid %d)", self.id, time.monotonic() - started, self.pid)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _until_healthy(self) -> bool:
        while not self._exited.is_set():
            answer = await upstream.get_json(self.socket, "/health", HEALTH_TIMEOUT_S)
            if answer is not None and answer[0] == 200:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), READY_POLL_S)
        return False

    # ----- exit -----

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        if self._stopping:
            log.info("the worker for %s (pid %d) %s", self.id, proc.pid, exit_reason(code))
            self.loaded_since = None
            self._exited.set()
            self.set_state("unloaded")
            return
        self.crashes.append(time.monotonic())
        detail = self._last_words()
        self._fail(exit_reason(code) + (f": {detail}" if detail else ""))
        self._exited.set()

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        self.loaded_since = None
        log.error("the worker for %s %s", self.id, reason)
        self.set_state("failed")

    def _last_words(self) -> str | None:
        """The last error the worker logged, else its last line that was not a log record (a
        traceback's last line, an abort message), else None."""
        errors = [message for level, message, _raw in self._tail if level >= logging.ERROR]
        raw = [message for _level, message, raw in self._tail if raw]
        if errors:
            return errors[-1]
        return raw[-1] if raw else None

    async def exit_reason(self) -> str | None:
        """Why the worker is gone, waiting a moment for its exit to be seen; None if it runs."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._exited.wait(), EXIT_REASON_WAIT_S)
        return self.last_error if self.state == "failed" else None

    async def stop(self) -> None:
        """SIGTERM (the worker cuts what still runs short with a clean error), SIGKILL if it is
        still there after STOP_KILL_AFTER_S; returns once it has exited."""
        proc = self.proc
        if proc is None or self._exited.is_set():
            return
        self._stopping = True
        if self.state != "unloading":
            self.set_state("unloading")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._exited.wait(), STOP_KILL_AFTER_S)
        except TimeoutError:
            log.warning(
                "the worker for %s did not stop in %gs: killing it", self.id, STOP_KILL_AFTER_S
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await self._exited.wait()

    async def stopped(self) -> None:
        await self._exited.wait()

    # ----- logs -----

    async def _relay_logs(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line past the reader's limit: asyncio dropped it; go on
                continue
            if not line:
                return
            self._relay(line.decode("utf-8", "replace").rstrip())

    def _relay(self, line: str) -> None:
        """One line of the worker's output through our own log handlers, tagged with the model."""
        if not line:
            return
        try:
            record = json.loads(line)
            level = logging.getLevelName(str(record["level"]).upper())
            name, message = str(record["logger"]), str(record["message"])
        except (ValueError, KeyError, TypeError):  # a traceback, or C-level output
            record, level, name, message = {}, logging.WARNING, "mlxd.worker", line
        if not isinstance(level, int):
            level = logging.INFO
        self._tail.append((level, message, not record))
        level = min(level, QUIET_LOGGERS.get(name, level))
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(level):
            return
        extra = {k: v for k, v in record.items() if k not in RECORD_FIELDS}
        if "exc_info" in record:
            message += "\n" + str(record["exc_info"])
        extra["model"] = self.id
        logger.handle(logger.makeRecord(name, level, "(worker)", 0, message, (), None, extra=extra))
