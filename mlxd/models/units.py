"""Byte counts for people (stdlib only: the front end of --models, which never imports mlx,
prints them too)."""

from __future__ import annotations


def human(nbytes: int | None) -> str:
    """``1.5 GiB``; ``unlimited`` for None."""
    if nbytes is None:
        return "unlimited"
    n = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
