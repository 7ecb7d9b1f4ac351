"""How much memory the KV caches of running requests may take (memory-aware admission).

The budget is what the device offers (or --memory-limit), less what the loaded model already
holds and the prompt cache's allowance, with a margin for activations and MLX's own buffers.
"""

from __future__ import annotations

import logging
import os

import mlx.core as mx

log = logging.getLogger(__name__)

DEVICE_SHARE = 0.9  # of the device's memory, when no --memory-limit is given
ACTIVATION_MARGIN = 0.1  # of what is left after the weights: logits, attention scratch


def device_info() -> dict:
    """MLX's description of the default device; empty where the backend has none."""
    try:
        return dict(mx.device_info())
    except Exception:  # best effort on some backends and versions
        return {}


def device_memory() -> int | None:
    """Bytes the device can give MLX: Metal's recommended working set, else physical RAM."""
    info = device_info()
    for key in ("max_recommended_working_set_size", "memory_size", "total_memory"):
        if isinstance(info.get(key), int) and info[key] > 0:
            return info[key]
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def kv_budget(memory_limit: int | None, prompt_cache_bytes: int) -> int | None:
    """KV bytes for running sequences, or None when nothing is known (no limit enforced)."""
    total = memory_limit
    if total is None:
        device = device_memory()
        total = None if device is None else int(device * DEVICE_SHARE)
    if total is None:
        return None
    free = total - mx.get_active_memory() - prompt_cache_bytes
    budget = int(free * (1 - ACTIVATION_MARGIN))
    if budget <= 0:
        log.warning(
            "the model leaves no room for KV caches within %s; requests will be "
            "refused (raise --memory-limit or lower --prompt-cache-bytes)",
            human(total),
        )
        return 0
    return budget


def human(nbytes: int | None) -> str:
    if nbytes is None:
        return "unlimited"
    n = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
