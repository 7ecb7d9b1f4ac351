"""cli.py: flags -> Config, --print-config, errors, and the light actions that never import mlx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxd import cli
from mlxd.service.config import MASK

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("mlx", "mlx_lm", "transformers", "numpy")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No MLXD_* from the developer's shell; PID files under tmp_path, never in ~."""
    for name in list(os.environ):
        if name.startswith(("MLXD_", "MLX_SERVER_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))


def effective(capsys, *argv) -> dict:
    assert cli.main(["--print-config", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_print_config_defaults_need_no_model(capsys, tmp_path):
    out = effective(capsys)
    assert out["model"] is None and out["port"] == 8000 and out["host"] == "127.0.0.1"
    assert out["pid_file"] == str(tmp_path / "mlxd-8000.pid")
    assert out["queue_size"] == 64 and out["max_batch_size"] == "auto"
    assert out["queue_timeout"] is None and out["log_format"] == "text"


def test_print_config_masks_keys(capsys, tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("from-file\n")
    monkeypatch.setenv("MLXD_API_KEY", "from-env")
    out = effective(
        capsys, "--api-key", "sk-one", "--api-key", "sk-two", "--api-key-file", str(keys)
    )
    assert out["api_keys"] == [MASK] * 3  # CLI keys replace env's; the file's are merged
    assert "sk-one" not in json.dumps(out) and "from-file" not in json.dumps(out)


def test_all_three_layers_and_the_alias(capsys, tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text(
        json.dumps(
            {
                "model": "m",
                "port": 1,
                "max-tokens": 10,
                "temperature": 0.1,
                "cors-origins": "http://a",
            }
        )
    )
    monkeypatch.setenv("MLXD_PORT", "2")
    monkeypatch.setenv("MLX_SERVER_MAX_TOKENS", "20")
    monkeypatch.setenv("MLX_SERVER_TEMPERATURE", "0.2")
    monkeypatch.setenv("MLXD_TEMPERATURE", "0.3")
    out = effective(
        capsys,
        "--config",
        str(path),
        "--max-tokens",
        "30",
        "--cors-origins",
        "http://b,http://c",
        "--cors-origins",
        "*",
        "--no-daemon",
    )
    assert out["model"] == str(tmp_path / "m")
    assert (out["port"], out["max_tokens"], out["temperature"]) == (2, 30, 0.3)
    assert out["cors_origins"] == ["http://b", "http://c", "*"]
    assert out["pid_file"] == str(tmp_path / "mlxd-2.pid")


def test_port_zero_pid_file_waits_for_the_port(capsys):
    assert effective(capsys, "--port", "0")["pid_file"].endswith("mlxd-{port}.pid")


def test_daemon_gets_a_default_log_file(capsys, tmp_path):
    out = effective(capsys, "--daemon", "--port", "8123")
    assert out["daemon"] is True
    assert out["log_file"] == str(tmp_path / ".mlxd" / "mlxd-8123.log")


def test_pid_file_without_xdg_runtime_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert effective(capsys)["pid_file"] == str(tmp_path / ".mlxd" / "mlxd-8000.pid")


def test_bad_env_value_names_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("MLXD_PORT", "abc")
    assert cli.main(["--print-config"]) == cli.EXIT_USAGE
    assert "mlxd: MLXD_PORT: 'abc' is not an integer" in capsys.readouterr().err


def test_unknown_env_variable_warns(capsys, monkeypatch):
    monkeypatch.setenv("MLXD_MAX_TOKEN", "5")
    assert cli.main(["--print-config"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["max_tokens"] == 512
    assert (
        "mlxd: warning: MLXD_MAX_TOKEN is not a setting; ignored (did you mean "
        "MLXD_MAX_TOKENS?)" in err
    )


def test_bad_file_key_names_the_file(capsys, tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"prot": 1}')
    assert cli.main(["--config", str(path), "--status"]) == cli.EXIT_USAGE
    assert f"config file {path}: key 'prot' is unknown" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "abc"], "argument --port: 'abc' is not an integer"),
        (["--temperature", "3"], "argument --temperature: '3' is out of range"),
        (["--log-format", "xml"], "argument --log-format: 'xml' is not one of text, json"),
        ([], "MODEL is required"),
        (["--stop", "--port", "0"], "with --port 0, name the port the server bound"),
    ],
)
def test_bad_command_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


# ----- the light actions: no mlx, in a blink -----

PROBE = """
import json, sys
from mlxd.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv, code",
    [
        (["--version"], 0),
        (["--help"], 0),
        (["--print-config"], 0),
        (["--stop", "--port", "8999"], 3),
        (["--status", "--port", "8999"], 3),
    ],
)
def test_light_actions_do_not_import_mlx(tmp_path, argv, code):
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"code": code, "heavy": []}


def test_leave_exits_hard_only_on_cuda(monkeypatch):
    """On MLX's CUDA backend a clean stop leaves with os._exit (C++ static destructors abort
    there); elsewhere the exit code is returned for a normal interpreter exit."""
    import types

    from mlxd import cli

    exits = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    monkeypatch.setattr(cli.logging, "shutdown", lambda: None)  # keep pytest's handlers open
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
    monkeypatch.setitem(sys.modules, "mlx.core", fake)
    assert cli._leave(3) == 3 and exits == []
    fake.cuda.is_available = lambda: True
    cli._leave(4)
    assert exits == [4]


# ----- habits from other tools, and mistakes said in one line -----


def test_model_flag_is_the_positional(capsys):
    assert effective(capsys, "--model", "m")["model"] == "m"
    assert effective(capsys, "m", "--model", "m")["model"] == "m"


def test_model_given_twice_differently(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["a", "--model", "b"])
    assert exc.value.code == 2
    assert "MODEL given twice: a and --model b" in capsys.readouterr().err


def test_a_bad_flag_is_one_line_and_a_hint(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["m", "--port", "99999"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "mlxd: error: argument --port: 99999 is out of range (0-65535)",
        "Try 'mlxd --help'.",
    ]


def test_config_file_reports_every_unknown_key(capsys, tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"prot": 1, "modle": "m", "port": 2}')
    assert cli.main(["--config", str(path), "--print-config"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.splitlines() == [
        f"mlxd: config file {path}: key 'prot' is unknown (did you mean 'port'?)",
        f"mlxd: config file {path}: key 'modle' is unknown (did you mean 'model'?)",
    ]


def test_model_not_found_before_listening(capsys, tmp_path):
    assert cli.main([str(tmp_path / "nope"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err == f"mlxd: model not found: {tmp_path / 'nope'} (no such file or directory)\n"


def test_hub_id_not_found_says_where_it_looked(capsys, tmp_path):
    assert cli.main(["mlx-community/SmolLM2-135M-Instruct-4bit", "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlxd: model not found: mlx-community/SmolLM2-135M-Instruct-4bit\n")
    assert "Hugging Face cache" in err and "LM Studio" in err and "listening" not in err


def test_a_text_file_named_gguf_is_said_once(capsys, tmp_path):
    (tmp_path / "x.gguf").write_text("hello world\n")
    assert cli.main([str(tmp_path / "x.gguf"), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err == f"mlxd: {tmp_path / 'x.gguf'}: not a GGUF file (it starts with 'hello wo')\n"


def test_print_config_with_a_model_shows_what_auto_comes_to(capsys, tiny_model_dir):
    out = effective(capsys, str(tiny_model_dir))
    auto = out["auto"]
    assert out["max_batch_size"] == "auto" and auto["device"]["kind"] in ("cpu", "metal", "cuda")
    assert isinstance(auto["max_batch_size"], int) and auto["why"]
    fixed = effective(capsys, str(tiny_model_dir), "--max-batch-size", "3")
    assert fixed["auto"]["max_batch_size"] == 3
