"""How much memory the KV caches of running requests may take (memory-aware admission).

The budget is what the device offers (or --memory-limit), less what the loaded model already
holds and the prompt cache's allowance, with a margin for activations and MLX's own buffers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import mlx.core as mx

from mlxd.models.units import human

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


@dataclass(frozen=True)
class DeviceFacts:
    """What the scheduling defaults depend on (engine/tuning.py), read once at start."""

    kind: str  # "cuda", "metal" or "cpu"
    memory_bytes: int | None  # what MLX may use there (Metal: recommended working set)
    name: str = ""


def device_kind() -> str:
    """Where MLX computes by default: "cuda", "metal" or "cpu" (the one place that asks)."""
    if mx.default_device() != mx.gpu:
        return "cpu"
    cuda = getattr(mx, "cuda", None)
    return "cuda" if cuda is not None and cuda.is_available() else "metal"


def device_facts() -> DeviceFacts:
    info = device_info()
    name = str(info.get("device_name") or info.get("architecture") or "")
    return DeviceFacts(device_kind(), device_memory(), name)


def kv_budget(
    memory_limit: int | None, prompt_cache_bytes: int, share: float = DEVICE_SHARE
) -> int | None:
    """KV bytes for running sequences, or None when nothing is known (no limit enforced);
    ``share`` is the part of the device's memory mlxd may use when no limit is given."""
    total = memory_limit
    if total is None:
        device = device_memory()
        total = None if device is None else int(device * share)
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


def use_kernel_cache(home: str | None = None) -> str | None:
    """On CUDA, keep MLX's compiled kernels (NVRTC output) and the driver's in a stable per-user
    folder, ~/.cache/mlxd/kernels/<mlx version>-<GPU>, unless MLX_PTX_CACHE_DIR or CUDA_CACHE_PATH
    already name one: MLX's own default, /tmp/mlx/<version>/ptx, is gone after a reboot on many
    machines, and a fresh process paid 35-50 s of compiles before its first token on an H200.
    MLX reads the variable at its first compile, so this runs before the model is touched.
    Returns the folder, or None off CUDA."""
    cuda = getattr(mx, "cuda", None)
    if cuda is None or not cuda.is_available():
        return None
    base = (
        home or os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    )
    gpu = "".join(c if c.isalnum() else "-" for c in str(device_info().get("device_name", "gpu")))
    version = getattr(mx, "__version__", "mlx")
    folder = os.path.join(base, "mlxd", "kernels", f"{version}-{gpu}")
    os.environ.setdefault("MLX_PTX_CACHE_DIR", os.path.join(folder, "ptx"))
    os.environ.setdefault("CUDA_CACHE_PATH", os.path.join(folder, "cuda"))
    return os.environ["MLX_PTX_CACHE_DIR"]
