"""What one setting is (``Option``) and the parsers that read its value.

A parser takes a string (CLI, env) or a JSON value (config file) and returns the value, or raises
``ValueError`` with a message that starts with the offending value. Stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ENV_PREFIX = "MLXD_"
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


# ----- value parsers: str (CLI, env) or JSON value (file) -> value, or ValueError -----


def integer(low: int, high: int | None = None) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ValueError(f"{raw!r} is not an integer")
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            span = f"{low}-{high}" if high is not None else f">= {low}"
            raise ValueError(f"{value} is out of range ({span})")
        return value

    return parse


def number(
    low: float, high: float | None = None, *, above: bool = False
) -> Callable[[object], float]:
    """A float in [low, high]; ``above`` makes the low end exclusive."""

    def parse(raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError(f"{raw!r} is not a number")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
        too_low = value <= low if above else value < low
        if value != value or too_low or (high is not None and value > high):  # NaN != NaN
            bounds = [f"> {low}" if above else f">= {low}"]
            bounds += [f"<= {high}"] if high is not None else []
            raise ValueError(f"{raw!r} is out of range ({', '.join(bounds)})")
        return value

    return parse


def size(raw: object) -> int:
    """Bytes: an integer, or digits with a K/M/G/T suffix (powers of 1024): "512M", "8g"."""
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ValueError(f"{raw!r} is not a size")
    text = str(raw).strip().lower().removesuffix("b").removesuffix("i")
    digits, unit = (text[:-1], text[-1]) if text[-1:] in SIZE_UNITS and text[-1:] else (text, "")
    if not digits.isdigit():
        raise ValueError(f"{raw!r} is not a size (bytes, or a number with K, M, G or T)")
    return int(digits) * SIZE_UNITS[unit]


def _unset_by(word: str):
    """A parser wrapper: JSON null or ``word`` gives None, anything else goes to ``parse``."""

    def wrap(parse: Callable[[object], object]) -> Callable[[object], object]:
        def parse_or_none(raw: object) -> object:
            if raw is None or (isinstance(raw, str) and raw.lower() == word):
                return None
            return parse(raw)

        parse_or_none.unset_word = word  # type: ignore[attr-defined]  # to_json shows "auto"
        return parse_or_none

    return wrap


optional = _unset_by("none")  # unset
auto = _unset_by("auto")  # the server decides


def choice(values: tuple[str, ...]) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        if not isinstance(raw, str) or raw.lower() not in values:
            raise ValueError(f"{raw!r} is not one of {', '.join(values)}")
        return raw.lower()

    return parse


def one_of(values: tuple[int, ...]) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        value = integer(min(values), max(values))(raw)
        if value not in values:
            raise ValueError(f"{raw!r} is not one of {', '.join(map(str, values))}")
        return value

    return parse


def text(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"{raw!r} is not a non-empty string")
    return raw.strip()


def boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    words = {
        "1": True,
        "true": True,
        "yes": True,
        "on": True,
        "0": False,
        "false": False,
        "no": False,
        "off": False,
    }
    if isinstance(raw, str) and raw.strip().lower() in words:
        return words[raw.strip().lower()]
    raise ValueError(f"{raw!r} is not a boolean (true/false)")


IDLE_NEVER = -1.0  # --idle-unload -1: keep the model loaded (Ollama's keep_alive -1)


def idle_seconds(raw: object) -> float:
    """Seconds >= 0, or -1 / "never" for never."""
    if isinstance(raw, str) and raw.strip().lower() == "never":
        return IDLE_NEVER
    value = number(IDLE_NEVER)(raw)
    if IDLE_NEVER < value < 0:
        raise ValueError(f"{raw!r} is not a number of seconds >= 0, or -1 for never")
    return value


def text_list(raw: object) -> tuple[str, ...]:
    """A JSON list of strings, or one string of comma-separated items."""
    items = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{raw!r} is not a string or a list of strings")
        out.extend(part.strip() for part in item.split(",") if part.strip())
    return tuple(out)


@dataclass(frozen=True)
class Option:
    field: str
    flag: str  # "max-tokens": --max-tokens, key "max-tokens", MLXD_MAX_TOKENS
    parse: Callable[[object], object]
    help: str
    kind: str = "value"  # "value", "list" (repeatable, merged) or "bool"
    metavar: str | None = None
    is_path: bool = False  # relative paths in a config file are relative to the file

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag.replace("-", "_").upper()
