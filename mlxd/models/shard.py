"""Loading this rank's share of the model: tensor parallel (``model.shard(group)``: a slice of
every layer's projections, two ``all_sum`` per layer) or pipeline parallel
(``model.model.pipeline(group)``: a slice of the layers), as mlx-lm's ``sharded_load`` does.

An MLX directory is opened lazily: only the arrays this rank keeps are ever read from disk, and
they are evaluated one layer at a time, so no rank holds the whole model even for a moment. With
pipeline parallelism a rank needs only the safetensors files that hold its layers (the
``model.safetensors.index.json`` says which): the others may be absent from its disk. A GGUF
file is one file that MLX cannot read in parts: each rank loads it whole, then keeps its share
and lets the rest go.

Tensor parallel's row-sharded projections sum their partial products in float32 and round once
(``widesum``), so the group's greedy output is one device's.

``dense`` weights are dequantized before the split (still lazily), so each rank evaluates only
its dense share: on CUDA, MLX 0.32's quantized matmul is slow past one sequence (an 8B model on
one H200 decoded 301 tok/s in all at 64 streams quantized; mlxd's default dense twin is what
makes a single GPU fast), and a group cannot keep a twin of each share beside it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.utils import dequantize_model, load_model, load_tokenizer

from mlxd.models import gguf, pipeline, vlm, widesum
from mlxd.models.device import device_memory
from mlxd.models.group import Group
from mlxd.models.loader import LoadedModel, ModelLoadError, context_length, served_name

log = logging.getLogger("mlxd.models")

INDEX_FILE = "model.safetensors.index.json"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")  # as sharded_load matches checkpoint keys
# Config keys whose values tensor parallelism divides among the ranks.
DIVIDED = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
DENSE_SHARE = 0.5  # weights "auto": dense only if a rank's dense share takes at most this much
# Tensor parallel keeps o_proj and down_proj dense in float32 (widesum): ~35% of a llama's
# weights at twice the bytes.
WIDE_GROWTH = 1.35
# --weights, --memory-limit, --tensor-sums float32
Policy = tuple[str, int | None, bool]


def load_shard(
    path: str | Path,
    group: Group,
    weights: str = "quantized",
    memory_limit: int | None = None,
    wide_sums: bool = False,
) -> LoadedModel:
    """This rank's share of the model at ``path``; ``weights``: "quantized" (as stored),
    "dense", or "auto" (dense on CUDA where the share fits ``memory_limit`` or the device, see
    ``dense_pays``); ``wide_sums``: tensor parallel's sums in float32 (False: MLX's own, in the
    model's dtype; for benchmarks that compare the two)."""
    policy = (weights, memory_limit, wide_sums)
    path = Path(path).expanduser()
    start = time.perf_counter()
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    if path.is_dir() and vlm.vlm_config(path) is not None:
        raise ModelLoadError(f"{path}: a vision-language model is served by one mlxd alone")
    if path.is_dir():
        model, tokenizer, config = _open_dir(path, group, policy, wide_sums)
        fmt = "mlx"
    elif path.suffix.lower() == ".gguf":
        try:
            model, tokenizer, config = gguf.load_gguf(path)
        except gguf.UnsupportedModelError as exc:
            raise ModelLoadError(f"{path.name}: {exc}") from exc
        model = _weights(model, group, policy)
        split(model, config, group, wide_sums)
        fmt = "gguf"
    else:
        raise ModelLoadError(f"{path}: expected an MLX model directory or a .gguf file")
    materialize(model)
    log.info(
        "rank %d of %d: %s parallel share loaded (%.2f GiB)",
        group.rank,
        group.size,
        group.mode,
        mx.get_active_memory() / 2**30,
    )
    return LoadedModel(
        model,
        tokenizer,
        config,
        path,
        served_name(path),
        fmt,
        context_length(config, tokenizer),
        time.perf_counter() - start,
    )


def _open_dir(path: Path, group: Group, policy: Policy, wide_sums: bool):
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json (is this an MLX model directory?)")
    try:
        # strict=False: with pipeline parallelism the files of other ranks' layers may be absent;
        # _check_files makes sure that this rank's are all there.
        model, config = load_model(path, lazy=True, strict=False)
    except (FileNotFoundError, ValueError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    model = _weights(model, group, policy)
    split(model, config, group, wide_sums)
    _check_files(path, model, group)
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id", None))
    return model, tokenizer, config


def _weights(model, group: Group, policy: Policy):
    """The model to split: as stored, or dequantized (lazily: nothing is computed yet)."""
    weights, memory_limit, wide_sums = policy
    params: list[tuple[str, mx.array]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    quantized = any("scales" in k for k, _ in params)
    dense = quantized and (
        weights == "dense"
        or (weights != "quantized" and dense_pays(model, group, memory_limit, wide_sums))
    )
    log.info("rank %d: %s weights", group.rank, "dense" if dense else "stored")
    return dequantize_model(model) if dense else model


def dense_pays(model, group: Group, memory_limit: int | None, wide_sums: bool = False) -> bool:
    """Whether "auto" serves dense weights: on CUDA (see the module's note), when a rank's dense
    share takes at most DENSE_SHARE of its device memory or --memory-limit."""
    if not mx.cuda.is_available():
        return False
    params: list[tuple[str, mx.array]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    codes = sum(v.size for k, v in params if not k.endswith(("scales", "biases")))
    dense_bytes = codes * 8 * 2  # at most 8 4-bit codes per packed element, 2 bytes each dense
    growth = WIDE_GROWTH if wide_sums and group.mode == "tensor" else 1.0
    available = memory_limit or device_memory() or 0
    return dense_bytes * growth / group.size <= DENSE_SHARE * available


def split(model, config: dict, group: Group, wide_sums: bool = False) -> None:
    """Keep this rank's share of ``model`` (still lazy, or loaded whole from a GGUF); with
    ``wide_sums``, tensor parallel sums its partial products in float32 (see ``widesum``)."""
    if group.mode == "pipeline":
        ours = pipeline.enable(model)
        if not ours and group.backend == "nccl":
            raise ModelLoadError(
                f"mlx-lm's pipeline split for {config.get('model_type')!r} models sends with "
                "send/recv, which MLX's CUDA backend lacks; leave out --pipeline"
            )
        if not hasattr(getattr(model, "model", None), "pipeline"):
            raise ModelLoadError(
                f"mlx-lm has no pipeline split for {config.get('model_type')!r} models; "
                "leave out --pipeline (tensor parallel)"
            )
        if len(model.model.layers) < group.size:
            raise ModelLoadError(f"{len(model.model.layers)} layers cannot feed {group.size} ranks")
        model.model.pipeline(group.handle)
        if ours and group.size > 1:
            model.model.agree_dtypes()  # a collective: every rank loads at the same time
        return
    if not hasattr(model, "shard"):
        raise ModelLoadError(
            f"mlx-lm has no tensor-parallel split for {config.get('model_type')!r} models; "
            "try --pipeline"
        )
    for key in DIVIDED:
        value = config.get(key)
        if isinstance(value, int) and value % group.size:
            raise ModelLoadError(
                f"{key} = {value} does not divide among {group.size} ranks (tensor parallel); "
                "try --pipeline"
            )
    model.shard(group.handle)
    if wide_sums:
        log.info("rank %d: %d projections sum in float32", group.rank, widesum.widen(model))


def _check_files(path: Path, model, group: Group) -> None:
    """Every safetensors file holding a weight this rank keeps must be on its disk (a missing
    one would leave those weights at their random initial values)."""
    index = path / INDEX_FILE
    if not index.is_file():
        if not list(path.glob("model*.safetensors")):
            raise ModelLoadError(f"{path}: no model*.safetensors file")
        return
    weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    inner = model.model
    start, end = getattr(inner, "start_idx", 0), getattr(inner, "end_idx", None)
    needed = set()
    for key, file in weight_map.items():
        m = _LAYER.search(key)
        layer = None if m is None else int(m.group(1))
        if group.mode == "tensor" or layer is None or start <= layer < (end or layer + 1):
            needed.add(file)
    missing = sorted(f for f in needed if not (path / f).is_file())
    if missing:
        raise ModelLoadError(f"{path}: rank {group.rank} needs {', '.join(missing)}")


def materialize(model) -> None:
    """Evaluate the weights this rank keeps, one layer at a time: a tensor-parallel slice is cut
    from the whole array, so evaluating everything at once could read the whole model in."""
    for layer in getattr(model, "layers", []):
        if layer is not None:
            mx.eval(layer.parameters())
            mx.clear_cache()
    mx.eval(model.parameters())
    mx.clear_cache()
