"""When the weight routing is measured (quantized weights against their dense twin).

Timing both copies at several batch sizes took 84.5 s of a 122 s first start of an 8B model on a
fresh CUDA machine (most of it compiling kernels for quantized batch shapes that then lose), and
50 s of SmolLM2's first start on a 2-core CPU. So by default (``--calibrate idle``) the server is
ready with the routing that calibrating has concluded on that kind of device (``weights.prior``),
and measures one piece at a time while it has had nothing to do for ``IDLE_BEFORE_S``: a request
that arrives meanwhile waits for at most one piece. The result is kept on disk as before, so a
later start serves the measured routing at once. ``--calibrate start`` measures before ready.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlxd.engine.settings import EngineSettings
from mlxd.models.device import device_facts
from mlxd.models.weights import DualModel, Routing, RoutingStore, calibrate, decide, log_routing
from mlxd.models.weights import measure as measure_pieces
from mlxd.models.weights import prior as prior_routing

log = logging.getLogger(__name__)

IDLE_BEFORE_S = 5.0  # an engine this long without work measures a piece


class Calibration:
    """The routing of one ``DualModel``: kept, measured at start, or measured in idle time."""

    def __init__(self, dual: DualModel, max_batch: int, kept: str | None, when: str) -> None:
        self.dual, self.max_batch, self.when = dual, max_batch, when
        self.kept = Path(kept) if kept else None
        self._pieces = None
        self._rows: list = []
        self._started = 0.0

    @property
    def pending(self) -> bool:
        """Whether measuring is still to do (in idle time)."""
        return self._pieces is not None

    def begin(self, on_phase: Callable[..., None]) -> None:
        """Give the model its routing before the server is ready (``on_phase`` hears of a
        calibration run now, with its progress)."""
        routing = RoutingStore.load(self.kept) if self.kept else None
        if routing is not None:
            log_routing(routing, f"calibration reused from {self.kept}; delete it to measure again")
            self.dual.routing = routing
        elif self.when == "start":
            on_phase("calibration")
            progress = lambda done, total: on_phase("calibration", done, total)  # noqa: E731
            self._settle(calibrate(self.dual, self.max_batch, progress=progress))
        else:
            kind = device_facts().kind
            self.dual.routing = prior_routing(kind)
            log_routing(self.dual.routing, f"{kind} default until measured in idle time")
            self._pieces = measure_pieces(self.dual, self.max_batch)

    def step(self) -> Routing | None:
        """Measure one piece; the routing once the last piece is done (None before)."""
        if self._pieces is None:
            return None
        if not self._rows and not self._started:
            self._started = time.perf_counter()
            log.info("calibrating in idle time (one piece at a time between requests)")
        row = next(self._pieces, StopIteration)
        if row is None:
            return None
        if row is not StopIteration:
            self._rows.append(row)
            return None
        self._pieces = None
        routing = decide(self._rows)
        log_routing(
            routing, f"calibrated in idle time ({time.perf_counter() - self._started:.1f}s)"
        )
        self._settle(routing)
        return routing

    def _settle(self, routing: Routing) -> None:
        self.dual.routing = routing
        if self.kept:
            RoutingStore.save(self.kept, routing)


class Weights:
    """The model an engine serves: one copy, or a ``DualModel`` whose routing is kept, measured
    at start or measured in idle time; under ``--weights auto`` a dense twin that never wins is
    dropped and ``freed`` says how many bytes that gave back (for the KV budget)."""

    def __init__(self, model, settings: EngineSettings) -> None:
        self.model = model
        self.policy = settings.weights
        self.freed = 0
        self._calibration = None
        if isinstance(model, DualModel):
            s = settings
            self._calibration = Calibration(
                model, s.max_batch_size, s.calibration_file, s.calibrate
            )
        self._bytes: dict | None = None

    @property
    def measuring(self) -> bool:
        return self._calibration is not None and self._calibration.pending

    def begin(self, on_phase: Callable[..., None]) -> None:
        if self._calibration is None:
            return
        self._calibration.begin(on_phase)
        if not self._calibration.pending:
            self._settle(self._calibration.dual.routing)

    def when_idle(self) -> bool:
        """Measure one piece; True when the served model object changed (twin dropped)."""
        assert self._calibration is not None
        routing = self._calibration.step()
        return routing is not None and self._settle(routing)

    def _settle(self, routing: Routing) -> bool:
        if self.policy != "auto" or routing.uses_dense:
            return False
        before = mx.get_active_memory()
        assert isinstance(self.model, DualModel)
        self.model = self.model.quantized
        self._calibration, self._bytes = None, None
        gc.collect()
        mx.clear_cache()
        self.freed = max(before - mx.get_active_memory(), 0)
        log.info("dense copy dropped: quantized weights win here (%d MiB freed)", self.freed >> 20)
        return True

    def report(self) -> dict:
        """Which weights serve, their bytes and the routing (for /v1/mlx/status and the bench's
        memory-bandwidth figures: a decode step reads every weight of the copy it runs on)."""
        model = self.model
        if not isinstance(model, DualModel):
            return {"copies": "one", "bytes": _weight_bytes(model)}
        if self._bytes is None:
            self._bytes = {"bytes": _weight_bytes(model.quantized)}
            self._bytes["dense_bytes"] = _weight_bytes(model.dense)
        return {
            "copies": "quantized and dense",
            **self._bytes,
            "decode_dense_from": model.routing.decode_dense_from,
            "prefill_dense": model.routing.prefill_dense,
            "measured": bool(model.routing.table),
        }


def _weight_bytes(model) -> int:
    params: list = tree_flatten(model.parameters())  # type: ignore[assignment]  # (name, array)
    return sum(array.nbytes for _name, array in params)
