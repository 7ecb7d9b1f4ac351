"""Joining an MLX distributed group: the backend named explicitly, the size checked.

``mx.distributed.init()`` with the default backend ("any") takes the first backend that comes up
and, when none does, quietly returns a group of one: every rank would then load the whole model
and serve it on its own. So the backend is always named (``--backend``), initialised strictly,
and the size it gives must be the size the launcher set up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

MODES = ("tensor", "pipeline")


class GroupError(Exception):
    """This process cannot take part in the group; the message says why and what to do."""


@dataclass(frozen=True)
class Group:
    """This process's place in the group, fixed once joined."""

    handle: Any  # mx.distributed.Group
    rank: int
    size: int
    backend: str
    mode: str  # "tensor": every rank holds a slice of every layer; "pipeline": of the layers
    step_timeout: float  # seconds a step may take before the group counts as lost

    @property
    def leader(self) -> bool:
        """Rank 0 serves HTTP and decides; the others follow."""
        return self.rank == 0


def join(
    backend: str,
    *,
    pipeline: bool,
    expected: int | None,
    step_timeout: float,
    init: Callable[..., Any] | None = None,
) -> Group:
    """Join the group over ``backend`` or raise ``GroupError``. ``expected`` is the size the
    launcher set up (None when its environment does not say); ``init`` is a test seam."""
    if init is None:
        if not mx.distributed.is_available(backend):
            raise GroupError(f"this MLX build has no {backend!r} distributed backend")
        init = mx.distributed.init
    try:
        handle = init(strict=True, backend=backend)
    except RuntimeError as exc:
        raise GroupError(
            f"cannot join a {backend} group: {exc} (start every rank with mlx.launch or "
            "mlxd --distributed; docs/DISTRIBUTED.md)"
        ) from None
    size = handle.size()
    if expected is not None and size != expected:
        raise GroupError(
            f"the {backend} backend gave a group of {size} where the launcher started "
            f"{expected} ranks; refusing to serve a partial model"
        )
    if size < 2:
        raise GroupError(
            f"the {backend} backend gave a group of {size}: start the ranks with mlx.launch "
            "(or mlxd --distributed), or serve on one device without --backend"
        )
    return Group(
        handle, handle.rank(), size, backend, MODES[1] if pipeline else MODES[0], step_timeout
    )
