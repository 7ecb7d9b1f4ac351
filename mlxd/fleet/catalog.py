"""The models a front end serves: ids, aliases, paths and per-model settings, from ``models``.

A directory source lists every MLX model directory (one with a ``config.json``) and every
``.gguf`` file directly inside it, named as a single-model server names its model; a model object
adds one model or gives a listed one aliases and settings (see modelspec.py). Directories are
listed again when a request names a model we do not know, so a model copied in later is found.
Stdlib only: the front end never imports mlx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlxd.service.modelspec import ModelEntry, Source


class CatalogError(Exception):
    """The ``models`` setting names no model, or names one twice; the message says which."""


@dataclass(frozen=True)
class ModelCard:
    id: str
    path: str
    aliases: tuple[str, ...] = ()
    settings: dict[str, object] = field(default_factory=dict)  # Config field -> value


def served_name(path: str | Path) -> str:
    """The id of a model: its directory name, or its GGUF file name without ``.gguf`` (as
    mlxd.models.loader.served_name, which imports mlx)."""
    path = Path(path).expanduser()
    return path.stem if path.suffix.lower() == ".gguf" else path.resolve().name


def is_model(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return (path / "config.json").is_file()
    return path.suffix.lower() == ".gguf" and path.is_file()


def scan(directory: str) -> list[Path]:
    """The models directly inside ``directory``, by name."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        raise CatalogError(f"models directory {directory}: {exc.strerror or exc}") from None
    return [Path(e.path) for e in entries if is_model(Path(e.path))]


class Catalog:
    """Model ids -> cards, and every name (id or alias) -> id."""

    def __init__(self, sources: tuple[Source, ...]) -> None:
        self.sources = sources
        self.cards: dict[str, ModelCard] = {}
        self.names: dict[str, str] = {}
        self.refresh()
        if not self.cards:
            raise CatalogError(f"no models found in {', '.join(self._directories()) or 'models'}")

    def _directories(self) -> list[str]:
        return [s for s in self.sources if isinstance(s, str)]

    def refresh(self) -> list[str]:
        """List the directories again; returns the ids that were not known before."""
        cards: dict[str, ModelCard] = {}
        for directory in self._directories():
            for path in scan(directory):
                cards.setdefault(served_name(path), ModelCard(served_name(path), str(path)))
        for entry in (s for s in self.sources if isinstance(s, ModelEntry)):
            card = self._apply(cards, entry)
            cards[card.id] = card
        names: dict[str, str] = {}
        for card in cards.values():
            for name in (card.id, *card.aliases):
                if names.setdefault(name, card.id) != card.id:
                    raise CatalogError(f"the name {name!r} is used by {names[name]} and {card.id}")
        new = [i for i in cards if i not in self.cards]
        self.cards.update(cards)  # a model that vanished from disk keeps its card (and worker)
        self.names.update(names)
        return new

    @staticmethod
    def _apply(cards: dict[str, ModelCard], entry: ModelEntry) -> ModelCard:
        if entry.path is None:
            base = cards.pop(entry.id or "", None)
            if base is None:
                raise CatalogError(
                    f"model {entry.id!r} has no 'path' and no listed directory holds it"
                )
        else:
            if not is_model(Path(entry.path)):
                raise CatalogError(f"model {entry.path}: not an MLX model directory or .gguf file")
            listed = next((c for c in cards.values() if c.path == entry.path), None)
            if listed is not None:
                del cards[listed.id]
            base = ModelCard(served_name(entry.path), entry.path)
        return replace(
            base,
            id=entry.id or base.id,
            aliases=base.aliases + entry.aliases,
            settings={**base.settings, **dict(entry.settings)},
        )

    def find(self, name: str) -> ModelCard | None:
        """The card a request's ``model`` names (an id or an alias); directories are listed
        again before a name is called unknown."""
        if name not in self.names:
            try:
                self.refresh()
            except CatalogError:
                return None
        model_id = self.names.get(name)
        return None if model_id is None else self.cards[model_id]

    def __iter__(self) -> Iterator[ModelCard]:
        return iter(self.cards.values())

    def __len__(self) -> int:
        return len(self.cards)
