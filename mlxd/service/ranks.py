"""One model across several processes: what MLX's launcher told this process, and
``mlxd --distributed HOSTS``, which runs that launcher with this very command on every rank.

``mlx.launch`` starts one process per rank and tells each, in its environment, which rank it is
and how to reach the others (a host file for ``ring``, a coordinator for ``jaccl``, a world size
for ``nccl``; ``mpirun`` sets its own). From that we learn our rank before importing MLX (so
``cli`` can skip the PID file on followers) and how many ranks to expect, which lets the group
join refuse a backend that silently came up alone. Stdlib only until the launcher runs.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

BACKENDS = ("ring", "jaccl", "mpi", "nccl")
RANK_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")  # mlx.launch, then mpirun


def launched_rank(environ: Mapping[str, str]) -> int | None:
    """This process's rank when a launcher started it, else None."""
    for key in RANK_VARIABLES:
        value = environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _json_length(path: str) -> int | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return len(data) if isinstance(data, list) else None


def _int_variable(environ: Mapping[str, str], *keys: str) -> int | None:
    for key in keys:
        value = environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    return None


# backend -> how many ranks the launcher set up, read off what it put in our environment
_EXPECTED = {
    "ring": lambda env: _json_length(env["MLX_HOSTFILE"]) if env.get("MLX_HOSTFILE") else None,
    "jaccl": lambda env: (
        _json_length(env["MLX_IBV_DEVICES"]) if env.get("MLX_IBV_DEVICES") else None
    ),
    "nccl": lambda env: _int_variable(env, "MLX_WORLD_SIZE"),
    "mpi": lambda env: _int_variable(env, "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"),
}


def expected_size(backend: str, environ: Mapping[str, str]) -> int | None:
    """How many ranks the launcher started for ``backend``; None when it does not say."""
    return _EXPECTED[backend](environ)


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``--flag VALUE`` and ``--flag=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


PORT_TRIES = 20  # attempts at finding a block of free ports


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive TCP ports free on this machine now. mlx.launch's fixed
    defaults (32323 for ring and jaccl, 12345 for nccl) would let two groups on one machine
    connect to each other's ranks."""
    for _ in range(PORT_TRIES):
        with socket.socket() as s:
            s.bind(("", 0))
            first = s.getsockname()[1]
        try:
            for port in range(first + 1, first + count):
                with socket.socket() as s:
                    s.bind(("", port))
        except OSError:
            continue
        return first
    raise OSError(f"no {count} consecutive free TCP ports")


def launcher_argv(
    argv: list[str], hosts: str, backend: str, *, python: str, frozen: bool, port: int
) -> list[str]:
    """``mlx.launch``'s command line that runs ``mlxd argv`` (less ``--distributed``) on every
    rank: ``hosts`` is mlx.launch's host file, or a number of ranks on this machine (one per GPU
    with ``nccl``, which gives rank r ``CUDA_VISIBLE_DEVICES=r``). ``port`` is the first of the
    ports the group connects through (``free_ports``)."""
    where = ["--hosts", "127.0.0.1", "-n", hosts] if hosts.isdigit() else ["--hostfile", hosts]
    where += ["--nccl-port" if backend == "nccl" else "--starting-port", str(port)]
    rest = _without(argv, "--distributed")
    # The frozen binary is its own interpreter; from a venv, run the package with this Python.
    if frozen:
        command = ["--", sys.executable, *rest]
    else:
        command = ["--python", python, "--", "-m", "mlxd", *rest]
    return ["mlx.launch", "--backend", backend, *where, *command]


def run_launcher(argv: list[str]) -> int:
    """Run MLX's launcher in this process; it returns once every rank has exited (and stops the
    others when one fails)."""
    from mlx._distributed_utils.launch import main

    sys.argv = argv
    main()
    return 0
