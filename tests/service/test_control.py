"""control.py: --status and --stop find a server wherever its PID file is (the per-user registry),
list every running one, stop the one that runs, and ask (or refuse) when several do.

Stand-ins for servers are ``exec -a mlxd sleep`` processes (their command line reads as mlxd);
one test runs a real server on the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from mlxd import cli
from mlxd.service import control, daemon

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("MLXD_", "MLX_SERVER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture
def fakes(tmp_path):
    """Start stand-in servers, each with a PID file under tmp_path/elsewhere and its copy in the
    registry, as run.py writes them; whatever is alive at the end is killed."""
    procs = []

    def start(port: int) -> subprocess.Popen:
        proc = subprocess.Popen(["bash", "-c", "exec -a mlxd sleep 60"])
        procs.append(proc)
        own = tmp_path / "elsewhere" / f"server-{port}.pid"
        info = {
            "pid": proc.pid,
            "host": "127.0.0.1",
            "port": port,
            "url": f"http://127.0.0.1:{port}",
            "model": f"/models/m{port}",
            "state": "ready",
            "shutdown_timeout": 1.0,
            "pid_file": str(own),
        }
        for path in (own, daemon.registry_dir() / f"{proc.pid}.pid"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{proc.pid}\n{json.dumps(info)}\n")
        while not daemon.is_mlxd(proc.pid):  # bash has exec'd into "mlxd"
            pass
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_nothing_runs(capsys, tmp_path):
    for action in ("--status", "--stop"):
        assert cli.main([action]) == daemon.EXIT_NOT_RUNNING
        assert f"none registered in {tmp_path / 'mlxd'}" in capsys.readouterr().out


def test_registry_dir(monkeypatch, tmp_path):
    assert daemon.registry_dir() == tmp_path / "mlxd"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert daemon.registry_dir() == tmp_path / ".mlxd" / "run"


def test_status_lists_every_running_one(capsys, fakes):
    one, two = fakes(18001), fakes(18002)
    assert cli.main(["--status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 mlxd are running:"
    assert out[1].split() == ["PID", "URL", "STATE", "MEMORY", "TOK/S", "UPTIME", "MODEL"]
    for line, proc, port in ((out[2], one, 18001), (out[3], two, 18002)):
        cells = line.split()
        assert cells[0] == str(proc.pid) and cells[1] == f"http://127.0.0.1:{port}"
        assert cells[2] == "ready" and cells[4] in ("KiB", "MiB")  # memory: "1.9 MiB"
        assert cells[5] == "?" and cells[-1] == f"/models/m{port}"  # no /stats to ask


def test_status_of_the_one_that_runs(capsys, fakes, tmp_path):
    proc = fakes(18001)
    assert cli.main(["--status"]) == 0
    out = capsys.readouterr().out
    assert f"mlxd is running: pid {proc.pid}" in out and "address:  http://127.0.0.1:18001" in out
    assert "memory:" in out and "tok/s:    ?" in out
    assert f"pid file: {tmp_path / 'elsewhere' / 'server-18001.pid'}" in out


def test_found_by_port_with_its_pid_file_elsewhere(capsys, fakes, tmp_path):
    """The systemd shape: --config FILE names the port, MLXD_PID_FILE (in the server's
    environment only) put the PID file elsewhere; --status/--stop --config FILE still find it."""
    proc = fakes(18003)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": "/models/m", "port": 18003}))
    assert cli.main(["--status", "--config", str(config)]) == 0
    assert f"running: pid {proc.pid}" in capsys.readouterr().out
    assert cli.main(["--stop", "--config", str(config)]) == 0
    assert proc.wait(5) == -signal.SIGTERM


def test_a_port_that_none_uses(capsys, fakes):
    proc = fakes(18001)
    assert cli.main(["--status", "--port", "18009"]) == daemon.EXIT_NOT_RUNNING
    out = capsys.readouterr().out
    assert "no PID file" in out and f"running elsewhere:\n  pid {proc.pid}" in out


def test_stop_the_one_that_runs(capsys, fakes):
    proc = fakes(18001)
    assert cli.main(["--stop"]) == 0
    assert f"stopped pid {proc.pid}" in capsys.readouterr().out
    assert proc.wait(5) == -signal.SIGTERM


def test_stop_with_several_wants_a_name(capsys, fakes):
    one, two = fakes(18001), fakes(18002)
    assert cli.main(["--stop"]) == control.EXIT_USAGE
    out, err = capsys.readouterr()
    assert str(one.pid) in out and str(two.pid) in out
    assert "name the one to stop: mlxd --stop --port N, or --pid PID" in err
    assert one.poll() is None and two.poll() is None
    assert cli.main(["--stop", "--pid", str(two.pid)]) == 0
    assert two.wait(5) == -signal.SIGTERM and one.poll() is None
    assert cli.main(["--stop", "--pid", "1"]) == daemon.EXIT_NOT_RUNNING


def test_stop_with_several_asks_on_a_terminal(capsys, fakes, monkeypatch):
    one, two = fakes(18001), fakes(18002)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    answers = iter(["", "2"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
    assert cli.main(["--stop"]) == control.EXIT_USAGE  # Enter: none
    assert "nothing stopped" in capsys.readouterr().out
    assert cli.main(["--stop"]) == 0
    assert two.wait(5) == -signal.SIGTERM and one.poll() is None


def test_dead_entries_leave_the_registry(capsys, fakes):
    proc = fakes(18001)
    proc.kill()
    proc.wait()
    assert cli.main(["--status"]) == daemon.EXIT_NOT_RUNNING
    assert not list(daemon.registry_dir().glob("*.pid"))


def test_pid_file_and_its_registry_copy(tmp_path):
    registry = tmp_path / "registry"
    pid_file = daemon.PidFile(tmp_path / "own.pid", {"port": 1}, registry)
    pid_file.write(state="ready")
    entry = registry / f"{os.getpid()}.pid"
    assert entry.read_text() == (tmp_path / "own.pid").read_text()
    assert json.loads(entry.read_text().splitlines()[1])["pid_file"] == str(tmp_path / "own.pid")
    pid_file.remove()
    assert not entry.exists() and not (tmp_path / "own.pid").exists()


# ----- a real server -----


def test_a_real_server_with_its_pid_file_elsewhere(tiny_model_dir, tmp_path):
    env = {**os.environ, "MLXD_PID_FILE": str(tmp_path / "srv" / "x.pid")}
    log = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxd", "--model", str(tiny_model_dir), "--port", "0"],
        cwd=ROOT,
        env=env,
        stderr=log,
    )
    try:
        entry = daemon.registry_dir() / f"{proc.pid}.pid"
        while not (entry.exists() and '"ready"' in entry.read_text()):
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
        url = json.loads(entry.read_text().splitlines()[1])["url"]
        # logit_bias: never the end of sequence, so the request decodes tokens to time
        body = json.dumps({"prompt": "Hi", "max_tokens": 5, "logit_bias": {"150": 100}}).encode()
        request = urllib.request.Request(
            url + "/v1/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            resp.read()
        status = subprocess.run(
            [sys.executable, "-m", "mlxd", "--status"], cwd=ROOT, capture_output=True, text=True
        )
        assert status.returncode == 0, status.stdout
        assert f"running: pid {proc.pid}" in status.stdout and url in status.stdout
        assert f"pid file: {tmp_path / 'srv' / 'x.pid'}" in status.stdout
        tok_s = next(line for line in status.stdout.splitlines() if "tok/s:" in line)
        assert float(tok_s.split()[-1]) > 0
        stop = subprocess.run(
            [sys.executable, "-m", "mlxd", "--stop"], cwd=ROOT, capture_output=True, text=True
        )
        assert stop.returncode == 0 and f"stopped pid {proc.pid}" in stop.stdout
        assert proc.wait(10) == 0
        assert not entry.exists() and not (tmp_path / "srv" / "x.pid").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
