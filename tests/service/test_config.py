"""config.py: parsers, the file and env layers, precedence, and errors that name their source."""

from __future__ import annotations

import json

import pytest

from mlxd.service.config import (
    MASK,
    OPTIONS,
    Config,
    ConfigError,
    integer,
    number,
    text_list,
)
from mlxd.service.sources import absolute_paths, env_warnings, from_env, from_file, resolve


def write(tmp_path, obj, name="mlxd.json"):
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


# ----- parsers -----


@pytest.mark.parametrize("raw, value", [("8000", 8000), (8000, 8000), ("0", 0), (" 7 ", 7)])
def test_integer_accepts_text_and_json(raw, value):
    assert integer(0, 65535)(raw) == value


@pytest.mark.parametrize(
    "raw, message",
    [
        ("abc", "'abc' is not an integer"),
        (True, "True is not an integer"),
        (1.5, "1.5 is not an integer"),
        ("70000", "70000 is out of range (0-65535)"),
    ],
)
def test_integer_errors_name_the_value(raw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        integer(0, 65535)(raw)


def test_number_ranges():
    assert number(0.0, 2.0)("1.5") == 1.5 and number(0.0, 2.0)(2) == 2.0
    for bad in ("2.5", "-1", "nan", "x", None):
        with pytest.raises(ValueError):
            number(0.0, 2.0)(bad)
    with pytest.raises(ValueError, match="out of range"):
        number(0.0, above=True)("0")


def test_text_list_splits_commas_and_takes_json_lists():
    assert text_list("a, b,,c") == ("a", "b", "c")
    assert text_list(["a,b", "c"]) == ("a", "b", "c")
    with pytest.raises(ValueError):
        text_list([1])


def test_every_option_names_a_config_field():
    fields = set(Config.__dataclass_fields__)
    assert {o.field for o in OPTIONS} == fields
    assert len({o.flag for o in OPTIONS}) == len(OPTIONS)


# ----- the file layer -----


def test_file_keys_may_use_dashes_or_underscores(tmp_path):
    path = write(
        tmp_path,
        {
            "max-tokens": 64,
            "top_p": 0.5,
            "api-key": ["k1", "k2"],
            "cors_origins": "http://a, http://b",
            "auth-health": True,
            "queue-timeout": None,
        },
    )
    assert from_file(path) == {
        "max_tokens": 64,
        "top_p": 0.5,
        "api_keys": ("k1", "k2"),
        "cors_origins": ("http://a", "http://b"),
        "auth_health": True,
        "queue_timeout": None,
    }


def test_file_unknown_key_names_file_and_key(tmp_path):
    path = write(tmp_path, {"prot": 8000}, "x.json")
    with pytest.raises(
        ConfigError,
        match=r"config file .*x\.json: key 'prot' is unknown "
        r"\(did you mean 'port'\?\)",
    ):
        from_file(path)


def test_file_bad_value_names_file_key_and_value(tmp_path):
    path = write(tmp_path, {"port": "abc"}, "x.json")
    with pytest.raises(ConfigError, match=r"x\.json: key 'port': 'abc' is not an integer"):
        from_file(path)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_file_malformed(tmp_path, content, message):
    with pytest.raises(ConfigError, match=message):
        from_file(write(tmp_path, content))


def test_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        from_file(str(tmp_path / "nope.json"))


def test_file_paths_are_relative_to_the_file(tmp_path):
    (tmp_path / "etc" / "models" / "m").mkdir(parents=True)
    path = write(
        tmp_path / "etc",
        {"model": "models/m", "log-file": "/var/log/mlxd.log", "pid-file": "run/p.pid"},
    )
    values = from_file(path)
    assert values["model"] == str(tmp_path / "etc" / "models" / "m")
    assert values["log_file"] == "/var/log/mlxd.log"
    assert values["pid_file"] == str(tmp_path / "etc" / "run" / "p.pid")


def test_file_model_may_be_a_hub_id(tmp_path):
    """ORG/NAME that is no path beside the file stays an id (mlxd.models.locate finds it)."""
    path = write(tmp_path, {"model": "mlx-community/SmolLM2-135M-Instruct-4bit"})
    assert from_file(path)["model"] == "mlx-community/SmolLM2-135M-Instruct-4bit"
    path = write(tmp_path, {"model": "models/a/b"})  # three parts: a path, even if missing
    assert from_file(path)["model"] == str(tmp_path / "models" / "a" / "b")


def test_file_reports_every_bad_key_at_once(tmp_path):
    path = write(tmp_path, {"prot": 1, "hots": "x", "port": "abc", "max-tokens": 5})
    with pytest.raises(ConfigError) as exc:
        from_file(path)
    lines = str(exc.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"config file {path}: ") for line in lines)
    assert "key 'prot' is unknown (did you mean 'port'?)" in lines[0]
    assert "key 'hots' is unknown (did you mean 'host'?)" in lines[1]
    assert "key 'port': 'abc' is not an integer" in lines[2]


# ----- the env layer -----


def test_env_names_and_aliases():
    env = {
        "MLXD_PORT": "9000",
        "MLX_SERVER_PORT": "9001",
        "MLX_SERVER_HOST": "0.0.0.0",
        "MLXD_API_KEY": "a,b",
        "MLXD_AUTH_HEALTH": "yes",
        "MLXD_MAX_TOKENS": "",
        "MLX_SERVER_MODEL": "/m",
        "PATH": "/bin",
    }
    assert from_env(env) == {
        "port": 9000,
        "host": "0.0.0.0",
        "api_keys": ("a", "b"),
        "auth_health": True,
        "model": "/m",
    }


@pytest.mark.parametrize(
    "env, message",
    [
        ({"MLXD_PORT": "abc"}, "MLXD_PORT: 'abc' is not an integer"),
        ({"MLX_SERVER_PORT": "abc"}, "MLX_SERVER_PORT: 'abc' is not an integer"),
        ({"MLXD_LOG_LEVEL": "loud"}, "MLXD_LOG_LEVEL: 'loud' is not one of debug, info"),
        ({"MLXD_DAEMON": "maybe"}, "MLXD_DAEMON: 'maybe' is not a boolean"),
    ],
)
def test_env_errors_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message):
        from_env(env)


def test_unknown_variables_are_ignored_with_a_warning():
    env = {
        "MLXD_PROT": "1",
        "MLXD_CONFIG": "c.json",
        "MLXD_BUNDLE": "onedir",
        "MLXD_TORCH": "1",  # service/imports.py's opt-out: no setting, no warning
        "MLXD_PORT": "1",
        "MLX_SERVER_WAIT_SECONDS": "9",
    }  # other tools use MLX_SERVER_ too
    assert from_env(env) == {"port": 1}
    assert env_warnings(env) == ["MLXD_PROT is not a setting; ignored (did you mean MLXD_PORT?)"]
    assert env_warnings({"MLXD_STEP_TRACE": "/tmp/steps-{pid}.jsonl"}) == []  # profiling, known


# ----- precedence: defaults < file < env < CLI -----

PRECEDENCE = [
    # key,         file,        env,     cli,    expected
    ("port", None, None, None, 8000),
    ("port", 9001, None, None, 9001),
    ("port", 9001, "9002", None, 9002),
    ("port", 9001, "9002", 9003, 9003),
    ("port", None, None, 9003, 9003),
    ("max_tokens", 10, "20", None, 20),
    ("max_tokens", 10, None, 30, 30),
    ("host", "0.0.0.0", None, None, "0.0.0.0"),
    ("host", "0.0.0.0", "::1", None, "::1"),
    ("log_level", "debug", "error", "info", "info"),
    ("auth_health", True, "false", None, False),
    ("auth_health", None, "true", False, False),
    ("shutdown_timeout", 5, None, None, 5.0),
]


@pytest.mark.parametrize("key, file, env, cli, expected", PRECEDENCE)
def test_precedence(tmp_path, key, file, env, cli, expected):
    opt = next(o for o in OPTIONS if o.field == key)
    path = write(tmp_path, {} if file is None else {opt.flag: file})
    environ = {} if env is None else {opt.env: env}
    cli_values = {} if cli is None else {key: cli}
    assert getattr(resolve(cli_values, environ, path), key) == expected


def test_mlxd_env_beats_its_alias_and_the_file(tmp_path):
    path = write(tmp_path, {"port": 1})
    env = {"MLX_SERVER_PORT": "2", "MLXD_PORT": "3", "MLX_SERVER_HOST": "::"}
    config = resolve({}, env, path)
    assert (config.port, config.host) == (3, "::")


def test_config_path_from_env(tmp_path):
    path = write(tmp_path, {"model": "/models/x"})
    assert resolve({}, {"MLXD_CONFIG": path}).model == "/models/x"
    assert resolve({"model": "/cli"}, {"MLXD_CONFIG": path}).model == "/cli"


def test_api_key_file_merges_with_keys(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nk2\n\n  k3  \nk1\n")
    config = resolve({"api_keys": ("k1",)}, {"MLXD_API_KEY_FILE": str(keys)})
    assert config.api_keys == ("k1", "k2", "k3")


def test_api_key_file_must_hold_a_key(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no keys"):
        resolve({"api_key_file": str(keys)}, {})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve({"api_key_file": str(tmp_path / "none")}, {})


def test_to_json_masks_keys():
    out = Config(model="m", api_keys=("sk-secret", "other")).to_json()
    assert out["api_keys"] == [MASK, MASK]
    assert "sk-secret" not in json.dumps(out)


def test_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = absolute_paths(Config(model="m", log_file="l.log", pid_file="~/p.pid"))
    assert config.model == str(tmp_path / "m") and config.log_file == str(tmp_path / "l.log")
    assert not config.pid_file.startswith("~")


def test_auto_settings_parse_and_show_as_auto():
    assert from_env({"MLXD_MAX_BATCH_SIZE": "auto", "MLXD_MAX_STEP_TOKENS": "256"}) == {
        "max_batch_size": None,
        "max_step_tokens": 256,
    }
    out = Config().to_json()
    assert out["max_batch_size"] == out["prefill_step_size"] == out["max_step_tokens"] == "auto"
    assert out["kv_bits"] is None and out["calibrate"] == "idle"  # unset, not auto
    assert Config(max_batch_size=16).to_json()["max_batch_size"] == 16


@pytest.mark.parametrize("raw, value", [("8", 8), (4, 4), ("none", None)])
def test_kv_bits(raw, value):
    assert from_env({"MLXD_KV_BITS": str(raw)}) == {"kv_bits": value}


def test_kv_bits_errors_name_the_choices():
    with pytest.raises(ConfigError, match="MLXD_KV_BITS: '6' is not one of 4, 8"):
        from_env({"MLXD_KV_BITS": "6"})


def test_tensor_sums_choice():
    assert Config().tensor_sums == "model"  # MLX's own: float32 costs ~20% a step on 2 GPUs
    assert from_env({"MLXD_TENSOR_SUMS": "float32"}) == {"tensor_sums": "float32"}
    with pytest.raises(ConfigError, match="MLXD_TENSOR_SUMS: 'bf16' is not one of float32, model"):
        from_env({"MLXD_TENSOR_SUMS": "bf16"})
