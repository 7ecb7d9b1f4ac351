"""Where settings come from, in layers: defaults < a JSON config file (``--config`` or
$MLXD_CONFIG) < MLXD_* (and the seed server's MLX_SERVER_*) environment variables < the command
line. Each layer reads raw values through the option's own parser (config.OPTIONS) and names its
source in every error; a config file's bad keys are all reported at once.

Paths in a config file are relative to the file; ``absolute_paths`` pins the rest before a
daemon leaves its directory. Stdlib only, as config.py is.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlxd.engine import steptrace
from mlxd.models.locate import HUB_ID
from mlxd.service import imports, modelspec
from mlxd.service.config import (
    OPTIONS,
    PATH_FIELDS,
    Config,
    ConfigError,
    option_for,
    unknown_key,
)
from mlxd.service.options import ENV_PREFIX, Option

ENV_ALIAS_PREFIX = "MLX_SERVER_"  # the seed server's names; MLXD_* wins when both are set
ENV_CONFIG = ENV_PREFIX + "CONFIG"
# MLXD_BUNDLE: spec/mlxd.spec's build switch; MLXD_TORCH: service/imports.py's opt-out
ENV_NOT_SETTINGS = {ENV_CONFIG, "MLXD_BUNDLE", imports.OPT_OUT, steptrace.ENV}


def from_file(path: str) -> dict[str, object]:
    """Settings from a JSON config file, parsed; errors name the file and the key."""
    where = f"config file {path}"
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of settings")
    base = Path(path).expanduser().resolve().parent
    values: dict[str, object] = {}
    problems: list[str] = []  # every bad key at once, not one per attempt
    for key, raw in data.items():
        opt = option_for(key)
        if opt is None:
            problems.append(f"{where}: {unknown_key(key)}")
            continue
        try:
            value = _parse(opt, raw, f"{where}: key {key!r}")
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if opt.is_path and isinstance(value, tuple):  # models: directories and model objects
            value = modelspec.rebase(value, base, PATH_FIELDS)
        elif opt.is_path and value is not None:
            value = _relative_to(base, str(value), hub_id_ok=opt.field == "model")
        values[opt.field] = value
    if problems:
        raise ConfigError("\n".join(problems))
    return values


def _relative_to(base: Path, value: str, *, hub_id_ok: bool) -> str:
    """A path in a config file is relative to the file; a model that is not there but reads as a
    hub id (``ORG/NAME``) stays an id, for mlxd.models.locate to find in the model caches."""
    path = base / Path(value).expanduser()
    if hub_id_ok and not path.exists() and HUB_ID.match(value):
        return value
    return str(path)


def from_env(environ: Mapping[str, str]) -> dict[str, object]:
    """Settings from MLXD_* (and, below them, MLX_SERVER_*) variables; empty means unset."""
    known = {opt.env: opt for opt in OPTIONS}
    values: dict[str, object] = {}
    for env, opt in known.items():
        alias = ENV_ALIAS_PREFIX + env[len(ENV_PREFIX) :]
        for name in (env, alias):
            if environ.get(name, "").strip():
                values[opt.field] = _parse(opt, environ[name], name)
                break
    return values


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """MLXD_* variables that are no setting: a typo would otherwise be ignored in silence. (Not
    an error: build and test tools share the prefix.)"""
    known = sorted({opt.env for opt in OPTIONS} | ENV_NOT_SETTINGS)
    out = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            out.append(
                f"{name} is not a setting; ignored"
                + (f" (did you mean {close[0]}?)" if close else "")
            )
    return out


def _parse(opt: Option, raw: object, where: str) -> object:
    try:
        return opt.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def read_key_file(path: str) -> tuple[str, ...]:
    """API keys, one per line; blank lines and # comments are skipped."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"api key file {path}: cannot read: {exc.strerror or exc}") from None
    keys = tuple(s for line in lines if (s := line.strip()) and not s.startswith("#"))
    if not keys:  # an empty file must not silently turn authentication off
        raise ConfigError(f"api key file {path}: holds no keys")
    return keys


def layers(
    cli: Mapping[str, object], environ: Mapping[str, str], config_path: str | None = None
) -> dict[str, Any]:
    """The settings some layer gives (file, env, CLI; defaults left out), by Config field."""
    path = config_path or environ.get(ENV_CONFIG, "").strip() or None
    values: dict[str, Any] = {}  # field -> value of that field's type (each option's parser)
    if path:
        values.update(from_file(path))
    values.update(from_env(environ))
    values.update(cli)
    if values.get("api_key_file"):
        keys = tuple(values.get("api_keys", ())) + read_key_file(str(values["api_key_file"]))
        values["api_keys"] = tuple(dict.fromkeys(keys))  # merged, first order kept
    return values


def resolve(
    cli: Mapping[str, object], environ: Mapping[str, str], config_path: str | None = None
) -> Config:
    """defaults < file (``config_path`` or $MLXD_CONFIG) < env < CLI (already parsed values)."""
    values: dict[str, Any] = layers(cli, environ, config_path)  # each value parsed by its Option
    return Config(**values)


def absolute_paths(config: Config) -> Config:
    """The same settings with paths made absolute (a daemon changes directory to /)."""
    changes: dict[str, Any] = {}
    for opt in OPTIONS:
        value = getattr(config, opt.field)
        if opt.is_path and isinstance(value, tuple):
            changes[opt.field] = modelspec.rebase(value, Path.cwd(), PATH_FIELDS)
        elif opt.is_path and value:
            changes[opt.field] = os.path.abspath(os.path.expanduser(value))
    return dataclasses.replace(config, **changes)
