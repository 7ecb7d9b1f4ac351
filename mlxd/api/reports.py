"""What /v1/mlx/status, /stats and /metrics report about the model, device, memory and queue."""

from __future__ import annotations

import dataclasses
import time

import mlx.core as mx

from mlxd import __version__
from mlxd.models.device import device_info


def _memory() -> dict:
    return {
        "active_bytes": mx.get_active_memory(),
        "peak_bytes": mx.get_peak_memory(),
        "cache_bytes": mx.get_cache_memory(),
    }


def _device() -> dict:
    info = {"name": str(mx.default_device())}
    info.update({k: v for k, v in device_info().items() if isinstance(v, (str, int, float))})
    return info


def queue_state(app) -> dict:
    engine = app.engine
    if engine is None:
        return {
            "running_sequences": 0,
            "waiting_requests": 0,
            "max_batch_size": None,
            "queue_size": None,
        }
    return {
        "running_sequences": engine.running_sequences,
        "waiting_requests": engine.waiting_requests,
        "max_batch_size": engine.settings.max_batch_size,
        "queue_size": engine.settings.queue_size,
        "prompt_cache_bytes": engine.prompt_cache_nbytes(),
        "kv_budget_bytes": engine.settings.kv_budget_bytes,
        "kv_bits": engine.settings.kv_bits,
        "counters": dataclasses.asdict(engine.stats),
    }


def _model_info(app) -> dict:
    info = {"id": app.name, "ready": app.ready}
    loaded = app.loaded
    if loaded is None:
        return info
    config = loaded.config
    return {
        **info,
        "path": str(loaded.path),
        "format": loaded.format,
        "adapter": loaded.adapter,
        "type": config.get("model_type"),
        "capabilities": loaded.capabilities,
        "quantization": config.get("quantization"),
        # GGUF: what each ggml tensor type became in MLX, and its error against the exact values
        "gguf_tensor_types": [r.as_json() for r in loaded.quantization_report] or None,
        "parameters": app.parameter_count,
        "context_length": loaded.context_length,
        "load_seconds": round(loaded.load_seconds, 3),
        "kv_bytes_per_token": app.engine.kv_bytes_per_token if app.engine else None,
        "weights": app.engine.weights_report() if app.engine else None,
    }


def status_report(app) -> dict:
    return {
        "version": __version__,
        "model": _model_info(app),
        "device": _device(),
        "memory": _memory(),
        "uptime_seconds": round(time.time() - app.started, 3),
        "queue": queue_state(app),
        "group": app.group.view() if app.group is not None else None,
    }


def gauges(app) -> dict[str, tuple[str, float]]:
    q, mem = queue_state(app), _memory()
    return {
        "mlxd_ready": ("1 once the model is loaded and warmed up.", 1 if app.ready else 0),
        "mlxd_sequences_running": (
            "Sequences decoding now (n per request with n choices).",
            q["running_sequences"],
        ),
        "mlxd_requests_waiting": ("Requests queued, not started.", q["waiting_requests"]),
        "mlxd_memory_active_bytes": ("MLX active memory.", mem["active_bytes"]),
        "mlxd_memory_peak_bytes": ("MLX peak memory since start.", mem["peak_bytes"]),
        "mlxd_memory_cache_bytes": ("MLX buffer cache.", mem["cache_bytes"]),
        "mlxd_prompt_cache_bytes": (
            "Bytes held by the prompt (KV) cache.",
            q.get("prompt_cache_bytes", 0),
        ),
        "mlxd_uptime_seconds": ("Seconds since start.", time.time() - app.started),
    }
