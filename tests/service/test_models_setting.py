"""The ``models`` setting and what the front end derives from it without loading anything: the
catalog of ids and aliases, the per-model settings passed to workers, the memory plan."""

from __future__ import annotations

import json

import pytest

from mlxd.cli import build_parser, cli_values
from mlxd.fleet.catalog import Catalog, CatalogError
from mlxd.fleet.pool import worker_args
from mlxd.service import autoconf
from mlxd.service.config import Config, ConfigError, option_for
from mlxd.service.modelspec import ModelEntry
from mlxd.service.sources import from_file, resolve

MODELS = option_for("models")


def make_models(root, *names):
    for name in names:
        if name.endswith(".gguf"):
            (root / name).write_bytes(b"GGUF" + b"\0" * 60)
        else:
            (root / name).mkdir()
            (root / name / "config.json").write_text("{}")
            (root / name / "model.safetensors").write_bytes(b"\0" * 1000)
    return root


def test_a_directory_or_a_list_of_directories_and_models():
    assert MODELS.parse("/srv/models") == ("/srv/models",)
    parsed = MODELS.parse(["/srv/models", {"id": "a", "aliases": "x", "max-batch-size": "4"}])
    assert parsed == ("/srv/models", ModelEntry(None, "a", ("x",), (("max_batch_size", 4),)))
    assert MODELS.parse({"a": {"path": "/m/a"}}) == (ModelEntry("/m/a", "a"),)


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "non-empty list"),
        ([{"aliases": ["x"]}], "needs a 'path' or an 'id'"),
        ([{"id": "a", "port": 1}], "key 'port': is a setting of the whole server"),
        ([{"id": "a", "max-bach-size": 1}], "did you mean 'max-batch-size'"),
        ([{"id": "a", "max-batch-size": 0}], "key 'max-batch-size': 0 is out of range"),
        ([{"id": "a", "aliases": [3]}], "'aliases' must be a list of names"),
    ],
)
def test_bad_model_entries_name_the_model_and_key(raw, message):
    with pytest.raises(ValueError, match=message):
        MODELS.parse(raw)


def test_file_paths_are_relative_to_the_file(tmp_path):
    config = tmp_path / "conf" / "mlxd.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"models": ["models", {"path": "extra/m", "adapter": "ad"}]}))
    sources = from_file(str(config))["models"]
    assert sources[0] == str(tmp_path / "conf" / "models")
    assert sources[1].path == str(tmp_path / "conf" / "extra" / "m")
    assert dict(sources[1].settings)["adapter"] == str(tmp_path / "conf" / "ad")


def test_env_and_cli_take_a_directory(tmp_path):
    assert resolve({}, {"MLXD_MODELS": "/srv/m"}).models == ("/srv/m",)
    args = build_parser().parse_args(
        ["--models", "/srv/m", "--preload", "a,b", "--max-loaded", "2"]
    )
    config = resolve(cli_values(args), {})
    assert (config.models, config.preload, config.max_loaded) == (("/srv/m",), ("a", "b"), 2)
    with pytest.raises(ConfigError, match="MLXD_IDLE_UNLOAD: '-0.5' is not a number"):
        resolve({}, {"MLXD_IDLE_UNLOAD": "-0.5"})
    assert resolve({}, {"MLXD_IDLE_UNLOAD": "never"}).idle_unload == -1


def test_worker_args_round_trip_through_the_command_line():
    values = {
        "max_batch_size": 4,
        "queue_timeout": 2.5,
        "prefill_batch_size": None,
        "auth_health": True,
        "cors_origins": ("a", "b"),
        "weights": "auto",  # the default: left out
    }
    args = worker_args(values)
    assert "--weights" not in args
    parsed = resolve(cli_values(build_parser().parse_args(["m", *args])), {})
    assert parsed.max_batch_size == 4 and parsed.queue_timeout == 2.5 and parsed.auth_health
    assert parsed.cors_origins == ("a", "b")


def test_catalog_ids_aliases_and_entries(tmp_path):
    root = make_models(tmp_path, "alpha", "beta.gguf", ".hidden", "notes")
    (tmp_path / "notes").joinpath("config.json").unlink()
    catalog = Catalog(
        (str(root), ModelEntry(id="beta", aliases=("b",), settings=(("max_tokens", 9),)))
    )
    assert [c.id for c in catalog] == ["alpha", "beta"]
    assert catalog.find("b").id == "beta" and catalog.find("b").settings == {"max_tokens": 9}
    assert catalog.find("gamma") is None
    make_models(tmp_path, "gamma")
    assert catalog.find("gamma").path == str(tmp_path / "gamma")  # listed again on a miss


def test_catalog_errors(tmp_path):
    with pytest.raises(CatalogError, match="no models found"):
        Catalog((str(tmp_path),))
    make_models(tmp_path, "alpha", "beta")
    with pytest.raises(CatalogError, match="'x' is used by alpha and beta"):
        Catalog(
            (
                str(tmp_path),
                ModelEntry(id="alpha", aliases=("x",)),
                ModelEntry(id="beta", aliases=("x",)),
            )
        )
    with pytest.raises(CatalogError, match="no listed directory holds it"):
        Catalog((str(tmp_path), ModelEntry(id="zeta")))


def test_memory_plan(tmp_path):
    make_models(tmp_path, "m")
    (tmp_path / "m" / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "hidden_size": 64,
                "max_position_embeddings": 1024,
            }
        )
    )
    per_token, context = autoconf.kv_shape(tmp_path / "m")
    assert (per_token, context) == (2 * 2 * 2 * 16 * 2, 1024)
    plan = autoconf.plan_model(str(tmp_path / "m"), 8, 1 << 20, None)
    assert plan.weights_bytes == 1000 and plan.kv_bytes == per_token * 1024 * 8
    assert plan.memory_limit > plan.weights_bytes + plan.prompt_cache_bytes + plan.kv_bytes
    given = autoconf.plan_model(str(tmp_path / "m"), 8, 1 << 20, 10 << 20)
    assert given.memory_limit == 10 << 20 and given.source == "memory-limit"
    assert autoconf.memory_budget(5, autoconf.Machine(100, "RAM")) == (5, "--memory-budget")
    assert autoconf.memory_budget(None, autoconf.Machine(100, "RAM"))[0] == 90


def test_print_config_shows_the_plan(tmp_path, capsys):
    from mlxd import cli

    make_models(tmp_path, "alpha")
    assert cli.main(["--models", str(tmp_path), "--memory-budget", "8G", "--print-config"]) == 0
    auto = json.loads(capsys.readouterr().out)["auto"]
    assert auto["memory_budget"] == 8 << 30 and auto["memory_budget_source"] == "--memory-budget"
    assert auto["models"]["alpha"]["weights_bytes"] == 1000


def test_model_and_models_together_is_a_usage_error(tmp_path, capsys):
    from mlxd import cli

    with pytest.raises(SystemExit):
        cli.main(["m", "--models", str(tmp_path)])
    assert "not both" in capsys.readouterr().err


def test_a_worker_writes_no_pid_file():
    from mlxd.cli import with_cli_defaults

    assert with_cli_defaults(Config(model="m", unix_socket="/tmp/s")).pid_file is None
    assert with_cli_defaults(Config(model="m")).pid_file is not None
