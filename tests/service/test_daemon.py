"""daemon.py and the life cycle: PID files (stale, foreign), --status, --stop, signals, --daemon.

The end-to-end tests run real ``python -m mlxd`` processes on port 0 and send real signals.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlxd.service import daemon

ROOT = Path(__file__).resolve().parents[2]

# A server whose forward passes take DELAY seconds and which never picks a special token (so a
# generation runs its full max_tokens): holds a request open long enough to signal mid-way.
SLOW_SERVER = """
import sys, time
import mlx.core as mx
from mlxd.service import run
from mlxd.cli import main

DELAY = 0.05

class Slow:
    def __init__(self, model):
        self.model = model
    def __call__(self, *args, **kwargs):
        time.sleep(DELAY)
        logits = self.model(*args, **kwargs)
        vocab = logits.shape[-1]
        return logits + mx.concatenate([mx.full((3,), -1e4), mx.zeros((vocab - 3,))])
    def __getattr__(self, name):
        return getattr(self.model, name)

original = run.Engine
run.Engine = lambda model, tokenizer, **kw: original(Slow(model), tokenizer, **kw)
sys.exit(main(sys.argv[1:]))
"""


# ----- helpers -----


@pytest.fixture
def env(tmp_path):
    """The environment for mlxd subprocesses: default PID and log files under tmp_path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLXD_", "MLX_SERVER_"))}
    return {**clean, "XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path)}


@pytest.fixture
def spawn():
    """Start helper processes; whatever is still alive at the end is killed."""
    procs = []

    def start(argv, **kw):
        procs.append(subprocess.Popen(argv, **kw))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def mlxd(*args, env, timeout=30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlxd", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_pid_file(path: Path, pid: int, **info) -> None:
    path.write_text(f"{pid}\n{json.dumps({'pid': pid, **info})}\n")


def read_info(path: Path) -> dict:
    first, second = path.read_text().splitlines()
    info = json.loads(second)
    assert int(first) == info["pid"]
    return info


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert proc is None or proc.poll() is None, f"mlxd exited with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def ready_pid_file(pattern_dir: Path, proc, pattern="mlxd-*.pid") -> Path:
    def ready():
        for path in pattern_dir.glob(pattern):
            try:
                if read_info(path).get("state") == "ready":
                    return path
            except (ValueError, OSError):  # never half-written, but may vanish (stale)
                pass

    return wait_for(ready, proc)


def alive(pid: int) -> bool:
    return daemon.process_argv(pid) is not None


# ----- recognising mlxd -----


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/usr/local/bin/mlxd", "--config", "/etc/mlxd/config.json"], True),
        (["/home/u/.venv/bin/python", "/home/u/.venv/bin/mlxd", "m"], True),
        (["python3", "-m", "mlxd", "m", "--port", "0"], True),
        (["./mlxd-0.1.0-macos-arm64", "m"], True),
        (["sleep", "30"], False),
        (["python3", "-m", "pytest", "tests/test_mlxd.py"], False),
        (["vim", "mlxd.json"], False),
        (["less", "mlxd-8000.log"], False),
    ],
)
def test_looks_like_mlxd(argv, expected):
    assert daemon.looks_like_mlxd(argv) is expected


def test_process_argv():
    assert daemon.process_argv(os.getpid())[0].endswith(("python", Path(sys.executable).name))
    assert daemon.process_argv(dead_pid()) is None


# ----- PID files -----


def test_pid_file_write_rewrite_remove(tmp_path):
    path = tmp_path / "run" / "mlxd-1.pid"
    pid_file = daemon.PidFile(path, {"port": 1, "state": "loading"})
    pid_file.write()
    assert path.read_text().splitlines()[0] == str(os.getpid())
    pid_file.write(state="ready")
    assert read_info(path)["state"] == "ready" and read_info(path)["port"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["mlxd-1.pid"]  # no temp files
    pid_file.remove()
    assert not path.exists()


def test_pid_file_removal_spares_a_successor(tmp_path):
    path = tmp_path / "mlxd.pid"
    pid_file = daemon.PidFile(path, {})
    pid_file.write()
    write_pid_file(path, os.getpid() + 1)  # another server took the file over
    pid_file.remove()
    assert path.exists()


def test_pid_path_fills_in_the_port():
    assert daemon.pid_path("/run/mlxd-{port}.pid", 8123) == Path("/run/mlxd-8123.pid")
    assert daemon.pid_path("/run/mlxd.pid", 8123) == Path("/run/mlxd.pid")


def test_probe(tmp_path, spawn):
    path = tmp_path / "mlxd.pid"
    assert daemon.probe(path).state == "absent"
    path.write_text("garbage\n")
    assert daemon.probe(path).state == "stale"
    write_pid_file(path, dead_pid())
    assert "is not running" in daemon.probe(path).why
    sleeper = spawn(["sleep", "30"])
    write_pid_file(path, sleeper.pid)
    found = daemon.probe(path)
    assert found.state == "stale" and "'sleep', not mlxd" in found.why
    fake = spawn(["bash", "-c", "exec -a mlxd sleep 30"])
    write_pid_file(path, fake.pid, port=1)
    wait_for(lambda: daemon.probe(path).running)
    assert daemon.probe(path).info["port"] == 1


# ----- --stop and --status without a server -----


def test_stop_and_status_when_nothing_runs(tmp_path, env):
    for action in ("--stop", "--status"):
        result = mlxd(action, "--port", 8999, env=env)
        assert result.returncode == daemon.EXIT_NOT_RUNNING
        assert "not running" in result.stdout and "mlxd-8999.pid" in result.stdout


def test_stop_dead_pid_removes_the_file(tmp_path, env):
    path = tmp_path / "mlxd.pid"
    write_pid_file(path, dead_pid())
    result = mlxd("--status", "--pid-file", path, env=env)
    assert result.returncode == 3 and "stale PID file" in result.stdout and path.exists()
    result = mlxd("--stop", "--pid-file", path, env=env)
    assert result.returncode == 3 and "removed stale PID file" in result.stdout
    assert not path.exists()


def test_stop_never_signals_a_foreign_process(tmp_path, env, spawn):
    sleeper = spawn(["sleep", "30"])
    path = tmp_path / "mlxd-8999.pid"
    write_pid_file(path, sleeper.pid, port=8999)
    result = mlxd("--stop", "--port", 8999, env=env)
    assert result.returncode == 3 and "not mlxd" in result.stdout
    assert sleeper.poll() is None


def test_stop_signals_mlxd_and_waits(tmp_path, env, spawn):
    fake = spawn(["bash", "-c", "exec -a mlxd sleep 30"])
    path = tmp_path / "fake.pid"
    write_pid_file(path, fake.pid, url="http://127.0.0.1:1")
    wait_for(lambda: daemon.probe(path).running)
    result = mlxd("--stop", "--pid-file", path, env=env)
    assert result.returncode == 0, result.stdout
    assert f"stopped pid {fake.pid}" in result.stdout
    assert fake.wait(5) == -signal.SIGTERM


def test_stop_reports_a_server_that_will_not_stop(tmp_path, env, spawn):
    stubborn = spawn(["bash", "-c", "trap '' TERM; exec -a mlxd sleep 30"])
    path = tmp_path / "stubborn.pid"
    write_pid_file(path, stubborn.pid)
    wait_for(lambda: daemon.probe(path).running)
    result = mlxd("--stop", "--pid-file", path, "--timeout", 0.3, env=env)
    assert result.returncode == 1 and "did not stop within 0.3s" in result.stderr
    assert stubborn.poll() is None


# ----- real servers -----


def test_start_status_refuse_second_stop(tiny_model_dir, tmp_path, env, spawn):
    with open(tmp_path / "stderr.log", "w") as log:  # the child keeps its own descriptor
        proc = spawn(
            [
                sys.executable,
                "-m",
                "mlxd",
                tiny_model_dir,
                "--port",
                "0",
                "--shutdown-timeout",
                "5",
            ],
            cwd=ROOT,
            env=env,
            stderr=log,
        )
    path = ready_pid_file(tmp_path, proc)
    info = read_info(path)
    port = info["port"]
    assert path.name == f"mlxd-{port}.pid" and info["pid"] == proc.pid  # port 0: the real port
    assert info["url"] == f"http://127.0.0.1:{port}" and info["model"] == str(tiny_model_dir)

    status = mlxd("--status", "--port", port, env=env)
    assert status.returncode == 0
    assert f"running: pid {proc.pid}" in status.stdout and info["url"] in status.stdout
    assert "state:    ready" in status.stdout and "uptime:" in status.stdout

    second = mlxd(tiny_model_dir, "--port", port, env=env)
    assert second.returncode == 1 and "already running" in second.stderr
    # Refused before it listened or read the model (was "< 1 s": too tight for a loaded machine)
    assert f"pid {proc.pid}" in second.stderr and "listening" not in second.stderr

    stop = mlxd("--stop", "--port", port, env=env)
    assert stop.returncode == 0 and f"stopped pid {proc.pid}" in stop.stdout
    assert proc.wait(10) == 0 and not path.exists()
    assert mlxd("--stop", "--port", port, env=env).returncode == 3
    assert mlxd("--status", "--port", port, env=env).returncode == 3
    assert "SIGTERM received" in (tmp_path / "stderr.log").read_text()


def stream(
    port: int, max_tokens: int
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps(
            # logit_bias: never eos, so the stream runs its length; logprobs: a chunk per token.
            {
                "prompt": "Hi",
                "max_tokens": max_tokens,
                "stream": True,
                "temperature": 1.0,
                "logit_bias": {"150": 100},
                "logprobs": 0,
            }
        ),
        {"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # the generation is under way
    return conn, resp


def start_slow(tiny_model_dir, tmp_path, env, spawn, *args):
    path = tmp_path / "slow.pid"
    with open(tmp_path / "stderr.log", "w") as log:  # the child keeps its own descriptor
        proc = spawn(
            [sys.executable, "-c", SLOW_SERVER, tiny_model_dir, "--port", "0", "--pid-file", path]
            + list(args),
            cwd=ROOT,
            env=env,
            stderr=log,
        )
    ready_pid_file(tmp_path, proc, path.name)
    return proc, path, read_info(path)["port"]


def test_sigterm_lets_the_request_finish(tiny_model_dir, tmp_path, env, spawn):
    sleeper = spawn(["sleep", "30"])  # a stale PID file naming a live, foreign process
    write_pid_file(tmp_path / "slow.pid", sleeper.pid)
    proc, path, port = start_slow(tiny_model_dir, tmp_path, env, spawn, "--shutdown-timeout", "30")
    assert sleeper.poll() is None and read_info(path)["pid"] == proc.pid
    conn, resp = stream(port, 20)
    proc.send_signal(signal.SIGTERM)
    events = [
        json.loads(line[6:]) for line in resp.read().splitlines() if line.startswith(b"data: {")
    ]
    conn.close()
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert proc.wait(30) == 0 and not path.exists()
    log = (tmp_path / "stderr.log").read_text()
    assert "removing stale PID file" in log and "stopped" in log


def test_second_sigint_exits_at_once(tiny_model_dir, tmp_path, env, spawn):
    proc, path, port = start_slow(tiny_model_dir, tmp_path, env, spawn, "--shutdown-timeout", "60")
    conn, _ = stream(port, 900)  # 45 s of generation: the grace period would wait for it
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT received" in (tmp_path / "stderr.log").read_text(), proc, 10)
    # At once: the log line comes just before the handlers are swapped, and a signal sent in
    # between reaches the first handler again, which exits too (lifecycle.py).
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 130 and time.monotonic() - started < 20  # not after 45 s of grace
    conn.close()
    assert not path.exists()
    assert "exiting now" in (tmp_path / "stderr.log").read_text()


def test_daemon_detaches_once_ready(tiny_model_dir, tmp_path, env):
    """Default files: the PID file in $XDG_RUNTIME_DIR, the log in ~/.mlxd (both under tmp_path)."""
    result = mlxd(tiny_model_dir, "--daemon", "--port", 0, env=env, timeout=60)
    paths = list(tmp_path.glob("mlxd-*.pid"))
    try:
        assert result.returncode == 0, result.stderr
        assert "listening on 127.0.0.1:" in result.stdout and "ready" in result.stdout
        info = read_info(paths[0])
        assert info["state"] == "ready" and alive(info["pid"])
        with urllib.request.urlopen(info["url"] + "/health", timeout=10) as resp:
            assert resp.status == 200
        stop = mlxd("--stop", "--port", info["port"], env=env)
        assert stop.returncode == 0 and not paths[0].exists()
        text = (tmp_path / ".mlxd" / "mlxd-0.log").read_text()
        assert "listening on" in text and "SIGTERM received" in text and "stopped" in text
    finally:
        for path in paths:
            if path.exists():
                os.kill(read_info(path)["pid"], signal.SIGKILL)


def test_daemon_reports_a_busy_port(tiny_model_dir, tmp_path, env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = mlxd(
            tiny_model_dir,
            "--daemon",
            "--port",
            port,
            "--pid-file",
            tmp_path / "d.pid",
            "--log-file",
            tmp_path / "d.log",
            env=env,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.stderr
    assert not (tmp_path / "d.pid").exists()


# ----- service/run.py, in process -----


def test_unwritable_pid_file_stops_the_start(tiny_model_dir, tmp_path, caplog):
    import asyncio

    from mlxd.service import run
    from mlxd.service.config import Config

    (tmp_path / "file").write_text("")
    config = Config(model=str(tiny_model_dir), port=0, pid_file=str(tmp_path / "file" / "x.pid"))
    assert asyncio.run(run.run_async(config)) == 1
    assert "cannot write the PID file" in caplog.text


@pytest.mark.parametrize(
    "host, keys, warns",
    [
        ("127.0.0.1", (), False),
        ("localhost", (), False),
        ("::1", (), False),
        ("0.0.0.0", (), True),
        ("::", (), True),
        ("192.168.1.5", (), True),
        ("0.0.0.0", ("k",), False),
    ],
)
def test_open_host_without_key_warns(host, keys, warns, caplog):
    from mlxd.service import lifecycle
    from mlxd.service.config import Config

    lifecycle.warn_if_open(Config(model="m", host=host, api_keys=keys))
    assert ("without an API key" in caplog.text) is warns


def test_served_model_name(tiny_model_dir):
    from mlxd.service.config import Config

    from helpers import ServerThread, get_json

    srv = ServerThread(Config(model=str(tiny_model_dir), port=0, served_model_name="my-model"))
    try:
        srv.start(wait_ready=False)
        status, body = get_json(srv.url + "/v1/models")
        assert status == 200 and [m["id"] for m in body["data"]] == ["my-model"]
    finally:
        srv.close()
