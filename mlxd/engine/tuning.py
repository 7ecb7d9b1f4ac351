"""Device-aware scheduling defaults: what ``auto`` means for --max-batch-size and
--prefill-step-size, and how much of the device's memory mlxd may use, chosen from the device
(CPU, Metal or CUDA GPU, and its memory) and the model (weight bytes, KV bytes per token).

``choose`` is a pure function of those facts, so every rule is tested with made-up devices; the
service logs its reasons at start and ``--print-config MODEL`` shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxd.models.device import DeviceFacts

# CPU: MLX's CPU backend costs about the same per token at any batch size (SmolLM2 on 2 cores:
# ~8 tok/s in total whatever the batch), so more streams only make each one slower; 8 was the
# measured default before auto and the CPU must not get slower.
CPU_BATCH = 8
CPU_PREFILL_STEP = 512  # tokens per prompt per step, measured on the CPU before auto
# GPU: a decode step reads every weight once whatever the batch, so throughput grows with the
# batch until memory or arithmetic runs out (H200, 8B 4-bit: 570 tok/s at 8 streams, 2847 at
# 64). The cap keeps one decode step short enough for steady streams and a queue that moves.
GPU_MAX_BATCH = {"cuda": 128, "metal": 64}
GPU_MIN_BATCH = 8
BATCH_ROUNDING = 8  # batch limits in multiples of 8: kernels are tuned for such shapes
GPU_PREFILL_STEP = 1024  # fewer steps per long prompt; the warm-up compiles this chunk
# KV room planned per stream when choosing the batch limit (admission still counts each
# request's own prompt + max_tokens): a long chat, or the whole context if shorter.
PLANNED_TOKENS_PER_STREAM = 4096
# Memory mlxd may use: a GPU's memory is its own (Metal's figure is already the recommended
# working set); a CPU shares RAM with everything else on the machine.
MEMORY_SHARE = {"cuda": 0.9, "metal": 0.9, "cpu": 0.75}


@dataclass(frozen=True)
class ModelFacts:
    weight_bytes: int  # every parameter as loaded (a dense twin included)
    kv_bytes_per_token: int  # keys and values, every layer, as the cache will hold them
    context_length: int


@dataclass(frozen=True)
class Scheduling:
    max_batch_size: int
    prefill_step_size: int
    memory_share: float  # of the device's memory, for model + KV caches (no --memory-limit)
    reasons: tuple[str, ...]  # one line per auto choice, for the start-up log


def choose(
    device: DeviceFacts,
    model: ModelFacts | None,
    *,
    max_batch_size: int | None = None,
    prefill_step_size: int | None = None,
) -> Scheduling:
    """The scheduling settings; an explicit (non-None) setting always wins over its rule."""
    share = MEMORY_SHARE.get(device.kind, MEMORY_SHARE["cpu"])
    reasons = []
    if max_batch_size is None:
        max_batch_size, why = _batch(device, model, share)
        reasons.append(f"max batch size {max_batch_size}: {why}")
    if prefill_step_size is None:
        prefill_step_size = CPU_PREFILL_STEP if device.kind == "cpu" else GPU_PREFILL_STEP
        reasons.append(f"prefill step {prefill_step_size} tokens per prompt ({device.kind})")
    return Scheduling(max_batch_size, prefill_step_size, share, tuple(reasons))


def _batch(device: DeviceFacts, model: ModelFacts | None, share: float) -> tuple[int, str]:
    if device.kind == "cpu":
        return CPU_BATCH, "CPU (the cost per token does not fall with the batch)"
    cap = GPU_MAX_BATCH.get(device.kind, GPU_MIN_BATCH)
    if device.memory_bytes is None or model is None or model.kv_bytes_per_token <= 0:
        return cap, f"{device.kind} (memory or model size unknown)"
    room = int(device.memory_bytes * share) - model.weight_bytes
    per_stream = model.kv_bytes_per_token * min(model.context_length, PLANNED_TOKENS_PER_STREAM)
    fit = max(room, 0) // per_stream
    batch = max(GPU_MIN_BATCH, min(cap, fit // BATCH_ROUNDING * BATCH_ROUNDING))
    return batch, (
        f"{device.kind}, {_gib(room)} GiB for KV caches after {_gib(model.weight_bytes)} GiB of "
        f"weights hold {fit} streams of {min(model.context_length, PLANNED_TOKENS_PER_STREAM)} "
        f"tokens (limit {GPU_MIN_BATCH}-{cap})"
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def kv_bytes_from_config(config: dict, dtype_bytes: int = 2) -> int | None:
    """KV bytes per token for a plain attention model described by an HF-style config (keys and
    values, every layer); None when the config does not say enough."""
    nested = config.get("text_config")
    text: dict = nested if isinstance(nested, dict) else config
    layers = text.get("num_hidden_layers")
    heads = text.get("num_attention_heads")
    kv_heads = text.get("num_key_value_heads") or heads
    head_dim = text.get("head_dim") or (
        text["hidden_size"] // heads if heads and text.get("hidden_size") else None
    )
    sizes = [x for x in (layers, kv_heads, head_dim) if isinstance(x, int) and x > 0]
    if len(sizes) != 3:
        return None
    return 2 * sizes[0] * sizes[1] * sizes[2] * dtype_bytes


def loaded_facts(model, config: dict, context_length: int) -> ModelFacts:
    """The facts of a loaded model (a ``DualModel`` counts both copies)."""
    from mlx.utils import tree_flatten

    copies = [getattr(model, "quantized", model)] + (
        [model.dense] if hasattr(model, "dense") else []
    )
    params: list = [p for m in copies for p in tree_flatten(m.parameters())]  # (name, array)
    weights = sum(array.nbytes for _name, array in params)
    return ModelFacts(weights, kv_bytes_from_config(config) or 0, context_length)


def file_facts(path: str) -> ModelFacts:
    """The facts read off a model's files without loading it (for ``--print-config MODEL``):
    weight bytes from the file sizes, the KV cost from its config; None if unreadable."""
    import json
    from pathlib import Path

    where = Path(path).expanduser()
    try:
        if where.is_dir():
            config = json.loads((where / "config.json").read_text())
            weights = sum(f.stat().st_size for f in where.glob("*.safetensors"))
        else:
            from mlxd.models.gguf import archs, read_header
            from mlxd.models.gguf.hparams import model_config

            header = read_header(where)
            config = model_config(header, archs.lookup(header.metadata))
            weights = where.stat().st_size
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot read {where}: {exc}") from None
    context = config.get("max_position_embeddings")
    context = context if isinstance(context, int) else PLANNED_TOKENS_PER_STREAM
    return ModelFacts(weights, kv_bytes_from_config(config) or 0, context)
