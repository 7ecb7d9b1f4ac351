"""The ``models`` setting: where several models come from, and what each one is told.

``--models DIR`` (or ``MLXD_MODELS=DIR``) is a string: a directory whose every MLX model
directory or ``.gguf`` file directly inside is a model. In a config file, ``"models"`` may also be
a list whose items are such directories (strings) or objects describing one model::

    "models": [
      "/srv/models",
      {"id": "SmolLM2-135M-Instruct.Q4_1", "aliases": ["smol"], "max-batch-size": 4},
      {"path": "/srv/extra/qwen", "id": "qwen", "adapter": "/srv/adapters/qwen-sql"}
    ]

An object names its model by ``path`` (a model directory or ``.gguf`` file) or, for a model found
in a listed directory, by ``id``; ``aliases`` are other names requests may use; every other key is
a per-model setting (any setting a single-model server takes, plus ``idle-unload``), parsed by the
same parsers as the command line. Stdlib only, like config.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

ENTRY_KEYS = ("path", "id", "aliases")  # the keys of a model object that are no setting
# What only the front end of --models uses; every other setting is a worker's, may be set per
# model, and is passed on to each worker on its command line (fleet/pool.py).
FRONT_END_FIELDS = frozenset(
    {
        "model",
        "host",
        "port",
        "served_model_name",
        "api_keys",
        "api_key_file",
        "auth_health",
        "cors_origins",
        "pid_file",
        "daemon",
        "log_file",
        "unix_socket",
        "models",
        "preload",
        "max_loaded",
        "memory_budget",
        "admin_keys",
        # One model across several processes is a single-model server's (docs/DISTRIBUTED.md).
        "backend",
        "pipeline",
        "tensor_sums",
        "distributed",
        "step_timeout",
    }
)
# Per model, and yet the front end's: it unloads workers; a worker never unloads itself.
FRONT_END_PER_MODEL = frozenset({"idle_unload"})

# (key, raw value) -> (Config field, parsed value); raises ValueError naming what is wrong.
SettingParser = Callable[[str, object], tuple[str, object]]


@dataclass(frozen=True)
class ModelEntry:
    """One model object of the ``models`` setting, parsed."""

    path: str | None = None  # a model directory or .gguf file; None: an id found in a directory
    id: str | None = None  # None: from the path, as a single-model server names it
    aliases: tuple[str, ...] = ()
    settings: tuple[tuple[str, object], ...] = ()  # (Config field, value), per-model overrides


Source = str | ModelEntry  # a directory to scan, or one model


def parse(raw: object, setting: SettingParser) -> tuple[Source, ...]:
    """The ``models`` value: a directory, or a list of directories and model objects."""
    if isinstance(raw, str):
        return (_directory(raw),)
    if isinstance(raw, dict):  # {"id": {...}, ...}: the ids as keys
        raw = [{"id": key, **_object(value, key)} for key, value in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{raw!r} is not a directory or a non-empty list of models")
    return tuple(
        _directory(item) if isinstance(item, str) else _entry(item, setting) for item in raw
    )


def _directory(raw: str) -> str:
    if not raw.strip():
        raise ValueError("an empty string is not a directory")
    return raw.strip()


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"model {where!r}: {value!r} is not an object of settings")
    return value


def _entry(raw: object, setting: SettingParser) -> ModelEntry:
    item = _object(raw, str(raw))
    path, model_id, aliases = item.get("path"), item.get("id"), item.get("aliases", [])
    where = str(model_id or path)
    if path is None and model_id is None:
        raise ValueError(f"model {item!r}: needs a 'path' or an 'id'")
    for name, value in (("path", path), ("id", model_id)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"model {where!r}: '{name}' must be a non-empty string")
    if isinstance(aliases, str):
        aliases = [aliases]
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise ValueError(f"model {where!r}: 'aliases' must be a list of names")
    settings = []
    for key, value in item.items():
        if key in ENTRY_KEYS:
            continue
        try:
            settings.append(setting(key, value))
        except ValueError as exc:
            raise ValueError(f"model {where!r}: key {key!r}: {exc}") from None
    return ModelEntry(path, model_id, tuple(aliases), tuple(settings))


def rebase(sources: tuple[Source, ...], base: Path, path_fields: frozenset[str]) -> tuple:
    """The same sources with relative paths (directories, model paths, path settings such as
    ``adapter``) made relative to ``base`` and absolute."""

    def absolute(path: str) -> str:
        return os.path.abspath(base / Path(path).expanduser())

    out: list[Source] = []
    for source in sources:
        if isinstance(source, str):
            out.append(absolute(source))
            continue
        settings = tuple(
            (field, absolute(value) if field in path_fields and isinstance(value, str) else value)
            for field, value in source.settings
        )
        path = absolute(source.path) if source.path else None
        out.append(replace(source, path=path, settings=settings))
    return tuple(out)
