"""Starting a group of mlxd ranks on this machine for the tests (MLX's own launcher, the
``ring`` backend on 127.0.0.1, each rank ``python -m mlxd`` from this checkout), and a stand-in
for an ``mx.distributed`` group handle."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlxd.service import ranks

from helpers import ROOT, get_json

LAUNCH_TIMEOUT_S = 180  # two ranks import mlx-lm and warm up; slow on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ring_launch(count: int, *command: str) -> list[str]:
    """MLX's launcher running ``python COMMAND...`` as ``count`` ranks over ``ring`` on this
    machine. Start it in a session of its own (``start_new_session``): killing the launcher
    alone leaves its ranks running."""
    return [
        str(Path(sys.executable).parent / "mlx.launch"),
        "--backend",
        "ring",
        "-n",
        str(count),
        "--hosts",
        "127.0.0.1",
        "--starting-port",
        str(ranks.free_ports(count)),
        "--python",
        sys.executable,
        "--",
        *command,
    ]


def launch_env() -> dict[str, str]:
    """The environment for ranks that import mlxd from this checkout."""
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )


class Group:
    """``mlx.launch --backend ring -n 2 -- -m mlxd MODEL --backend ring ...`` in a session of
    its own (so that teardown can end the launcher and every rank at once)."""

    def __init__(self, model: Path, tmp: Path, *args: str, count: int = 2) -> None:
        self.port = free_port()
        self.log_path = tmp / f"group-{self.port}.log"
        command = ring_launch(
            count,
            "-m",
            "mlxd",
            str(model),
            "--backend",
            "ring",
            "--port",
            str(self.port),
            "--pid-file",
            str(tmp / f"mlxd-{self.port}.pid"),
            "--max-tokens",
            "16",
            *args,
        )
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=launch_env(),
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> Group:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while get_json(self.url + "/health", timeout=5)[0] != 200:
            assert self.proc.poll() is None, f"the group exited: {self.log()}"
            assert time.monotonic() < deadline, f"the group never became ready: {self.log()}"
            time.sleep(0.2)
        return self

    def rank_pid(self, rank: int) -> int:
        return get_json(self.url + "/health")[1]["group"]["ranks"][rank]["pid"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()


class FakeHandle:
    """What mlxd and mlx-lm ask of an ``mx.distributed`` group handle: its rank and size."""

    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size
