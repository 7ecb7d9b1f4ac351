"""Auto-configuration: memory budgets that fit the machine and each model's size.

Read from the machine and from the files on disk alone (stdlib, no mlx), so ``--print-config``
shows them in a blink and the front end of ``--models`` stays light. A value the user gives
(``--memory-budget``, a model's ``memory-limit``) always wins; each auto value says where it
came from, in the start-up log and in ``--print-config``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

DEVICE_SHARE = 0.9  # of the device's memory, as models/device.py: what mlxd plans to fill
# Metal's recommendedMaxWorkingSetSize is about three quarters of RAM on Apple silicon (MLX reads
# the exact figure; a worker's own log says it).
METAL_SHARE_OF_RAM = 0.75
ACTIVATION_MARGIN = 0.1  # as models/device.py: a worker keeps this share beside its KV caches
KV_FLOOR_BYTES = 256 * 1024**2  # KV room any model gets (a few long chats), however small
KV_BYTES_PER_VALUE = 2  # float16/bfloat16 caches, what quantized and half-precision models use
DEFAULT_CONTEXT = 4096  # when a config names none (as mlxd.models.loader)
NVIDIA_SMI_TIMEOUT_S = 5.0
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".npz")


@dataclass(frozen=True)
class Machine:
    memory: int | None  # bytes the device offers; None when nothing could be read
    source: str  # where the figure came from, for the log


def machine() -> Machine:
    """The device's memory: the smallest NVIDIA GPU's (nvidia-smi), Metal's working set on
    Apple silicon, else physical RAM (MLX's CPU backend)."""
    gpu = _nvidia_memory()
    if gpu is not None:
        return Machine(gpu, "nvidia-smi")
    ram = _ram()
    if ram is not None and sys.platform == "darwin" and platform.machine() == "arm64":
        return Machine(int(ram * METAL_SHARE_OF_RAM), "3/4 of RAM (Metal)")
    return Machine(ram, "RAM")


def _ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _nvidia_memory() -> int | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
        ).stdout
        sizes = [int(line.strip()) * 1024**2 for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return min(sizes) if sizes else None


def memory_budget(given: int | None, device: Machine) -> tuple[int | None, str]:
    """(bytes all loaded models may use, or None for no limit known; how it was chosen)."""
    if given is not None:
        return given, "--memory-budget"
    if device.memory is None:
        return None, "unknown device memory: no limit"
    return int(device.memory * DEVICE_SHARE), f"{DEVICE_SHARE:.0%} of {device.source}"


# ----- one model -----


def weights_bytes(path: str | Path) -> int:
    """Bytes of weight files: a GGUF file's size, or the sum of a directory's weight files."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)


def _model_config(path: Path) -> dict:
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kv_shape(path: str | Path) -> tuple[int | None, int]:
    """(KV cache bytes per token or None when unknown, context length) from an MLX directory's
    config.json; a GGUF file's are read only when it loads, so None there."""
    config = _model_config(Path(path)) if Path(path).is_dir() else {}
    context = next(
        (
            config[k]
            for k in ("max_position_embeddings", "max_sequence_length", "seq_length")
            if isinstance(config.get(k), int) and config[k] > 0
        ),
        DEFAULT_CONTEXT,
    )
    layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
    hidden = config.get("hidden_size")
    if not (isinstance(layers, int) and isinstance(heads, int) and isinstance(hidden, int)):
        return None, context
    if min(layers, heads, hidden) <= 0:
        return None, context
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    return 2 * layers * kv_heads * head_dim * KV_BYTES_PER_VALUE, context


@dataclass(frozen=True)
class ModelPlan:
    """What a model needs loaded: weights + prompt cache + KV room (+ margin) = memory_limit,
    the figure its worker gets as --memory-limit and the budget counts."""

    weights_bytes: int
    kv_bytes: int
    prompt_cache_bytes: int
    memory_limit: int
    source: str  # "auto" or "memory-limit" (the user's)

    def to_json(self) -> dict:
        return asdict(self)


def plan_model(
    path: str, max_batch_size: int, prompt_cache_bytes: int, memory_limit: int | None
) -> ModelPlan:
    """KV room for every batch slot at the full context, but no more than the weights' size
    (at least KV_FLOOR_BYTES): room to serve, not to reserve the device for one model."""
    weights = weights_bytes(path)
    per_token, context = kv_shape(path)
    room = max(weights, KV_FLOOR_BYTES)
    kv = room if per_token is None else min(per_token * context * max_batch_size, room)
    if memory_limit is not None:
        kv = max(memory_limit - weights - prompt_cache_bytes, 0)
        return ModelPlan(weights, kv, prompt_cache_bytes, memory_limit, "memory-limit")
    limit = weights + prompt_cache_bytes + int(kv / (1 - ACTIVATION_MARGIN))
    return ModelPlan(weights, kv, prompt_cache_bytes, limit, "auto")
