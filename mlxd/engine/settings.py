"""The engine's settings, shared by the generation thread (loop.py) and admission (admission.py)."""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.service.config import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_PREFILL_STEP,
    DEFAULT_PROMPT_CACHE_BYTES,
    DEFAULT_QUEUE_SIZE,
)


@dataclass(frozen=True)
class EngineSettings:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE  # sequences decoding at once
    prefill_batch_size: int | None = None  # prompts prefilled together; None: by the budget
    prefill_step_size: int = DEFAULT_PREFILL_STEP  # most prompt tokens per sequence per step
    max_step_tokens: int | None = None  # tokens per step; None: adaptive (schedule.py)
    queue_size: int = DEFAULT_QUEUE_SIZE  # jobs waiting to start; past that, 429
    queue_timeout: float | None = None  # seconds a job may wait to start
    prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES
    kv_budget_bytes: int | None = None  # KV cache bytes all running sequences may hold
    weights: str = "auto"  # see weights.py; with a DualModel: keep both or calibrate
    calibrate: str = "idle"  # with a DualModel: "idle" or "start" (calibration.py)
    warm_up: str = "idle"  # the batch paths' warm-up: "idle" or "start" (warmup.py)
    solo: bool = True  # a lone sequence decodes outside the batch (solo.py)
    calibration_file: str | None = None  # where a weight-routing calibration is kept/reused
    kv_bits: int | None = None  # quantized KV cache (kvcache.py); None: full precision
    quantized_kv_start: int = 0  # tokens a batch keeps in full precision before quantizing
