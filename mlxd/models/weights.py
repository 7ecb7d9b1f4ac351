"""Weight-format policy: serve a quantized model, a dense twin of it, or both, chosen per step.

Quantized matmuls read a quarter of the bytes, which wins when a step is bound by memory traffic
(one sequence decoding); dense matmuls win once the step is bound by arithmetic (many sequences,
or a prefill), at least on CUDA where measured crossovers sit around batch 2-8. Rather than
trusting a constant, ``calibrate`` times a decode step at a few batch sizes and a prefill chunk
with each copy, on this device, at start-up, and the ``DualModel`` routes every forward pass.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import dequantize_model

from mlxd.models.device import device_info, device_kind, device_memory

log = logging.getLogger(__name__)

DENSE_MARGIN = 0.95  # dense must be at least 5% faster to be chosen (timing noise)
HEAD_BYTES = 1024 * 1024  # of each weight file, hashed into the calibration key


@dataclass(frozen=True)
class Plan:
    """What calibration times: cached context per decode step, prefill chunk, repetitions."""

    batches: tuple[int, ...]
    context: int
    prefill: int
    reps: int


# A GPU step takes milliseconds; a CPU prefill token tens of them, so the CPU plan is small.
GPU_PLAN = Plan(batches=(1, 2, 4, 8, 16, 32, 64), context=64, prefill=128, reps=3)
CPU_PLAN = Plan(batches=(1, 2, 4, 8), context=8, prefill=16, reps=1)


def is_quantized(model: nn.Module) -> bool:
    return any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()
    )


def dense_twin(model: nn.Module) -> nn.Module:
    """A dequantized copy, in the dtype of the quantization scales (so both copies fill the same
    KV cache with the same dtype)."""
    twin = dequantize_model(copy.deepcopy(model))
    mx.eval(twin.parameters())
    return twin


@dataclass
class Routing:
    decode_dense_from: int | None = None  # smallest decode batch that runs dense; None: never
    prefill_dense: bool = False
    table: tuple = ()  # (kind, batch, quantized_s, dense_s) rows, for logs

    @property
    def uses_dense(self) -> bool:
        return self.prefill_dense or self.decode_dense_from is not None


class DualModel:
    """Called like an mlx-lm model; each forward pass goes to the quantized or the dense copy.

    Attribute lookups (``layers``, ``make_cache``, ``args``...) go to the quantized copy: both
    share architecture and cache layout.
    """

    def __init__(self, quantized: nn.Module, dense: nn.Module, routing: Routing | None = None):
        self.quantized = quantized
        self.dense = dense
        self.routing = routing or Routing()

    def pick(self, batch: int, length: int) -> nn.Module:
        r = self.routing
        if length > 1:
            return self.dense if r.prefill_dense else self.quantized
        if r.decode_dense_from is not None and batch >= r.decode_dense_from:
            return self.dense
        return self.quantized

    def __call__(self, inputs: mx.array, *args, **kwargs):
        return self.pick(inputs.shape[0], inputs.shape[1])(inputs, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.quantized, name)


def prepare(
    model: nn.Module,
    policy: str,
    on_copy: Callable[[], None] | None = None,
    memory_limit: int | None = None,
) -> nn.Module | DualModel:
    """The model object to serve under ``policy`` (calibration happens later, on the thread
    that will generate; see ``calibrate``).

    ``auto`` builds the twin on a GPU (CUDA, Apple silicon) wherever it fits in half the free
    memory and lets calibration decide; the result is kept on disk (``RoutingStore``) and later
    starts reuse it. On this project's x86 CPU calibrating SmolLM2 took 35 s and chose quantized
    decode at batch 1-4 but dense prefill (1.32 vs 1.59 s) on a quiet machine, and quantized
    everywhere (8.2 vs 13.5 s prefill) with other work running, so the CPU serves quantized.
    ``on_copy()`` runs as the dense copy begins (start-up progress); ``memory_limit`` (a worker
    of --models gets its share of the device as one) bounds what "free memory" means."""
    if policy == "quantized" or not is_quantized(model):
        return model
    if any(
        "LoRA" in type(m).__name__ or "DoRA" in type(m).__name__ for _, m in model.named_modules()
    ):
        # An adapter wraps the quantized layers; a dense twin of the base alone would drop it.
        log.info("weights: quantized (a LoRA adapter is loaded; no dense copy)")
        return model
    if policy == "auto" and device_kind() == "cpu":
        # On the CPU the copies trade places with the machine's load (SmolLM2 on 2 cores: dense
        # prefill 17% faster when quiet, 39% slower when busy) and timing them takes 50 s, or
        # minutes on a busy machine, during which a request would wait: serve quantized.
        log.info("weights: quantized (CPU; --weights both --calibrate start to measure)")
        return model
    if policy == "auto" and not _dense_fits(model, memory_limit):
        return model
    if on_copy is not None:
        on_copy()
    start = time.perf_counter()
    twin = dense_twin(model)
    log.info("built a dense copy of the quantized weights in %.1fs", time.perf_counter() - start)
    if policy == "dense":
        return twin
    return DualModel(model, twin)


def _dense_fits(model: nn.Module, memory_limit: int | None) -> bool:
    """Whether a dense copy leaves half the free memory (the device's, or within
    ``memory_limit``) for KV caches and the rest."""
    dense = 0
    for _path, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            out_dim, packed = m.weight.shape
            dense += out_dim * packed * 32 // m.bits * m.scales.dtype.size
    device = memory_limit or device_memory()
    if device is None:
        return False
    free = device - mx.get_active_memory()
    if dense > free // 2:
        log.info(
            "weights: quantized (a dense copy needs %d MiB; %d MiB free)", dense >> 20, free >> 20
        )
        return False
    return True


def _time(fn, reps: int) -> float:
    fn()  # first run pays kernel compiles; not counted
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def _decode_step_time(model: nn.Module, batch: int, plan: Plan) -> float:
    cache = make_prompt_cache(model)
    context = mx.zeros((batch, plan.context), dtype=mx.int32)
    mx.eval(model(context, cache=cache))
    step = mx.zeros((batch, 1), dtype=mx.int32)
    trim = [c for c in cache if hasattr(c, "trim")]

    def one() -> None:
        mx.eval(model(step, cache=cache))
        for c in trim:  # keep the cache length fixed from step to step
            c.trim(1)

    return _time(one, plan.reps)


def _prefill_time(model: nn.Module, plan: Plan) -> float:
    chunk = mx.zeros((1, plan.prefill), dtype=mx.int32)
    return _time(lambda: mx.eval(model(chunk, cache=make_prompt_cache(model))), plan.reps)


def calibrate(
    dual: DualModel,
    max_batch: int,
    plan: Plan | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Routing:
    """Time both copies; route decode from the first batch size where dense is clearly and
    stays faster, and prefill to whichever copy is faster. ``progress(done, total)`` after each
    shape timed (start-up progress)."""
    plan = plan or (CPU_PLAN if device_kind() == "cpu" else GPU_PLAN)
    start = time.perf_counter()
    total = 1 + len([b for b in plan.batches if b <= max(max_batch, 1)])
    tick = progress or (lambda done, total: None)
    tick(0, total)
    rows = []
    for row in measure(dual, max_batch, plan):
        if row is not None:
            rows.append(row)
            tick(len(rows), total)
    routing = decide(rows)
    log_routing(routing, f"calibrated in {time.perf_counter() - start:.1f}s")
    return routing


def measure(dual: DualModel, max_batch: int, plan: Plan | None = None):
    """The calibration in small pieces, for a caller that measures between other work: yields
    None after timing one copy, and a (kind, batch, quantized_s, dense_s) row after both."""
    plan = plan or (CPU_PLAN if device_kind() == "cpu" else GPU_PLAN)
    pq = _prefill_time(dual.quantized, plan)
    yield None
    yield ("prefill", 1, pq, _prefill_time(dual.dense, plan))
    for batch in [b for b in plan.batches if b <= max(max_batch, 1)]:
        q = _decode_step_time(dual.quantized, batch, plan)
        yield None
        yield ("decode", batch, q, _decode_step_time(dual.dense, batch, plan))
    mx.clear_cache()


def decide(rows: list) -> Routing:
    """The routing that timed ``rows`` (see ``measure``) call for."""
    dense_from = None
    prefill_dense = False
    for kind, batch, q, d in rows:
        if kind == "prefill":
            prefill_dense = d < q * DENSE_MARGIN
        elif d < q * DENSE_MARGIN:
            dense_from = batch if dense_from is None else dense_from
        else:
            dense_from = None  # dense must keep winning from the crossover on
    return Routing(dense_from, prefill_dense, tuple(rows))


def prior(kind: str) -> Routing:
    """The routing served before a calibration has run (--calibrate idle), per device kind:
    what calibrating has concluded there (on CUDA, H100 and H200, 8B 4-bit, four runs: dense
    prefill 2-3x faster, dense decode from batch 1-2, e.g. 12 vs 107 ms at batch 32; on this
    project's 2-core CPU and elsewhere: quantized, which needs no dense copy to be right)."""
    if kind == "cuda":
        return Routing(decode_dense_from=2, prefill_dense=True)
    return Routing()


def log_routing(routing: Routing, how: str) -> None:
    for kind, batch, q, d in routing.table:
        log.info(
            "calibration %s batch %d: quantized %.2f ms, dense %.2f ms -> %s",
            kind,
            batch,
            q * 1e3,
            d * 1e3,
            "dense" if d < q * DENSE_MARGIN else "quantized",
        )
    dense_from = routing.decode_dense_from
    log.info(
        "weights: decode %s, prefill %s (%s)",
        f"dense from batch {dense_from}" if dense_from else "quantized at every batch size",
        "dense" if routing.prefill_dense else "quantized",
        how,
    )


class RoutingStore:
    """Calibrations kept on disk, one JSON file per (model content, MLX, device, batch limit), so
    only the first start of a model on a machine pays for timing both copies. Keyed by what the
    weight files hold (sizes and a digest of each one's first MiB, where safetensors and GGUF keep
    their headers), not where they are: a copied model, another mlxd build (frozen or a venv) and
    a moved folder reuse it. Delete the file (its path is logged) to measure again."""

    VERSION = 2  # 2: keyed by content (1 was keyed by path and mtime)

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def default(cls) -> RoutingStore:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return cls(Path(base) / "mlxd" / "calibration")

    def path(self, model_path: str, max_batch: int) -> Path:
        where = Path(model_path).resolve()
        files = (
            [where]
            if where.is_file()
            else sorted(
                f for f in where.iterdir() if f.suffix == ".safetensors" or f.name == "config.json"
            )
        )
        parts = [
            str(self.VERSION),
            mx.__version__,  # type: ignore[attr-defined]  # mlx.core's stub leaves it out
            str(mx.default_device()),
            _device_name(),
            str(os.cpu_count()),
            str(max_batch),
        ]
        parts += [f"{f.stat().st_size}:{_head_digest(f)}" for f in files]
        key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
        return self.directory / f"{key}.json"

    @staticmethod
    def load(path: Path) -> Routing | None:
        try:
            raw = json.loads(path.read_text())
            return Routing(
                raw["decode_dense_from"],
                bool(raw["prefill_dense"]),
                tuple((str(k), int(b), float(q), float(d)) for k, b, q, d in raw["table"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring calibration file %s: %s", path, exc)
            return None

    @staticmethod
    def save(path: Path, routing: Routing) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(
                json.dumps(
                    {
                        "decode_dense_from": routing.decode_dense_from,
                        "prefill_dense": routing.prefill_dense,
                        "table": [list(row) for row in routing.table],
                    }
                )
            )
            os.replace(tmp, path)
        except OSError as exc:  # a read-only home is no reason not to serve
            log.warning("could not keep the calibration in %s: %s", path, exc)


def _head_digest(path: Path) -> str:
    """sha256 of a file's first HEAD_BYTES: its header (tensor names, shapes, dtypes, offsets;
    GGUF metadata) and the start of its data; with the size, what tells two models apart."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()


def _device_name() -> str:
    info = device_info()
    return str(
        info.get("device_name")
        or info.get("architecture")
        or platform.processor()
        or platform.machine()
    )
