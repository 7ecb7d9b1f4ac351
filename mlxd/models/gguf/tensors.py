"""GGUF tensor data -> mlx-lm weights: which types load, read from the file with numpy, renamed to
the architecture's module paths, and the model built with MLX quantization read off the packed
shapes.

We read the data ourselves rather than through ``mx.load``: it expands K-quants to float16 (4x the
file's memory), narrows BF16 to float16 (overflow past 65504), and drops types it does not know.
F32, F16 and BF16 load as they are; quantized types become MLX affine-quantized weights
(``repack``), with the error that costs measured per tensor.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlxd.models.gguf.archs import GLOBAL_TENSORS, Arch
from mlxd.models.gguf.header import GgufHeader, TensorInfo, UnsupportedModelError, ggml_type_name
from mlxd.models.gguf.quants import BLOCK_FORMATS, row_bytes
from mlxd.models.gguf.repack import MLX_BITS, MLX_GROUP, TensorError, TypeReport, summarize, to_mlx

log = logging.getLogger(__name__)

GGML_BF16 = 30
# ggml type id -> numpy dtype of the float types we load as they are
FLOAT_TYPES = {0: np.float32, 1: np.float16, GGML_BF16: np.uint16}
QUANT_TYPES = set(MLX_BITS)
# What mx.load's own GGUF reader (C++, several times faster than numpy) returns exactly: F32, F16,
# and Q4_0, Q4_1, Q8_0 as the very triples ``repack`` builds. A file of these types alone is read
# with it (K-quants it would expand to float16, BF16 it narrows: files with those take numpy).
MX_LOAD_TYPES = {0, 1, 2, 3, 8}
EXACT = TensorError(0.0, 0.0, 0.0, 0)
BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias|scales|biases)")


def check_tensors(header: GgufHeader, arch: Arch) -> None:
    """Refuse tensor types we cannot load, and tensors the architecture has no place for."""
    bad = [
        t for t in header.tensors.values() if t.ggml_type not in FLOAT_TYPES.keys() | QUANT_TYPES
    ]
    if bad:
        kinds = ", ".join(sorted({ggml_type_name(t.ggml_type) for t in bad}))
        loadable = ", ".join(ggml_type_name(t) for t in sorted(FLOAT_TYPES.keys() | QUANT_TYPES))
        raise UnsupportedModelError(
            f"tensor {bad[0].name} has type {ggml_type_name(bad[0].ggml_type)} ({len(bad)} "
            f"tensors of type {kinds}); loadable types: {loadable}"
        )
    if "token_embd.weight" not in header.tensors:
        raise UnsupportedModelError("GGUF without token_embd.weight")
    for info in header.tensors.values():
        if info.ggml_type in QUANT_TYPES and (
            len(info.shape) != 2 or info.shape[1] % BLOCK_FORMATS[info.ggml_type].elems
        ):
            raise UnsupportedModelError(
                f"tensor {info.name}: quantized, but not a matrix of whole blocks {info.shape}"
            )
        if info.name not in arch.config_tensors:
            mlx_name(info.name, arch)  # raises on a tensor the architecture has no place for


def mlx_name(gguf_name: str, arch: Arch) -> str:
    if m := BLOCK_NAME.fullmatch(gguf_name):
        if m[2] in arch.block:
            return f"model.layers.{m[1]}.{arch.block[m[2]]}.{m[3]}"
    else:
        base, _, part = gguf_name.rpartition(".")
        if base in GLOBAL_TENSORS and part in ("weight", "bias", "scales", "biases"):
            return f"{GLOBAL_TENSORS[base]}.{part}"
    raise UnsupportedModelError(f"tensor {gguf_name} has no place in a {arch.name} model")


def unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's rotary permutation of Q/K output rows.

    Its converter maps HF rows (head, half, i) to (head, i, half); quantization groups run along
    the input dimension, so packed weights, scales and biases all take the same row shuffle.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _nbytes(info: TensorInfo) -> int:
    rows = int(np.prod(info.shape[:-1], dtype=np.int64))
    if info.ggml_type in FLOAT_TYPES:
        return rows * info.shape[-1] * np.dtype(FLOAT_TYPES[info.ggml_type]).itemsize
    return rows * row_bytes(info.ggml_type, info.shape[-1])


def _read_float(raw: np.ndarray, info: TensorInfo) -> mx.array:
    data = mx.array(raw.view(FLOAT_TYPES[info.ggml_type]).reshape(info.shape))
    return data.view(mx.bfloat16) if info.ggml_type == GGML_BF16 else data


def read_tensors(
    path: Path, header: GgufHeader
) -> tuple[dict[str, mx.array], list[tuple[int, TensorError]]]:
    """Every tensor under its GGUF name (a quantized ``x.weight`` also gives ``x.scales`` and
    ``x.biases``), and the error of each quantized one against its exact ggml values."""
    infos = header.tensors.values()
    if all(t.ggml_type in MX_LOAD_TYPES for t in infos):
        loaded = mx.load(str(path))
        assert isinstance(loaded, dict)  # a .gguf path gives name -> array
        return loaded, [(t.ggml_type, EXACT) for t in infos if t.ggml_type in QUANT_TYPES]
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors: dict[str, mx.array] = {}
    errors = []
    for info in infos:
        end = info.offset + _nbytes(info)
        if end > data.size:
            raise UnsupportedModelError(f"tensor {info.name} runs past the end of the file")
        raw = data[info.offset : end]
        if info.ggml_type in FLOAT_TYPES:
            tensors[info.name] = _read_float(raw, info)
            continue
        packed, err = to_mlx(raw.reshape(info.shape[0], -1), info.ggml_type, info.name)
        base = info.name.removesuffix(".weight")
        tensors[info.name] = mx.array(packed.weight)
        tensors[f"{base}.scales"] = mx.array(packed.scales)
        tensors[f"{base}.biases"] = mx.array(packed.biases)
        errors.append((info.ggml_type, err))
    del data  # every array above is a copy; let the mapping go
    return tensors, errors


def log_report(reports: list[TypeReport], seconds: float) -> None:
    for report in reports:
        log.info("GGUF %s", report.line())
    if reports:
        log.info("GGUF tensors converted to MLX in %.2f s", seconds)


def read_and_report(path: Path, header: GgufHeader) -> tuple[dict[str, mx.array], list[TypeReport]]:
    """``read_tensors``, with the error per type summarized and logged."""
    start = time.perf_counter()
    tensors, errors = read_tensors(path, header)
    reports = summarize(errors)
    log_report(reports, time.perf_counter() - start)
    return tensors, reports


def mlx_weights(tensors: dict[str, mx.array], config: dict, arch: Arch) -> dict[str, mx.array]:
    """mlx-lm weights from ``read_tensors``: renamed, llama's Q/K rows unpermuted, gemma's norms
    shifted back, config tensors (rope factors) left out."""
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out = {}
    for name, w in tensors.items():
        if name in arch.config_tensors:
            continue
        m = BLOCK_NAME.fullmatch(name)
        kind = m[2] if m else name.rpartition(".")[0]
        if arch.permute_qk and kind in heads:
            w = unpermute_rows(w, heads[kind])
        if arch.norm_shift and kind.endswith("norm"):
            w = w - arch.norm_shift
        out[mlx_name(name, arch)] = w
    return out


def module_quantization(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, dict | bool]:
    """Per quantizable module: its MLX quantization params (read off the packed shapes), or
    False."""
    params: dict[str, dict | bool] = {}
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized"):
            continue
        if (scales := weights.get(f"{path}.scales")) is None:
            params[path] = False
            continue
        in_dims = scales.shape[-1] * MLX_GROUP
        bits = weights[f"{path}.weight"].shape[-1] * 32 // in_dims
        params[path] = {"group_size": MLX_GROUP, "bits": bits}
    return params


def quantization_entry(params: dict[str, dict | bool]) -> dict | None:
    """mlx-lm's ``quantization`` config: the commonest params as the default, plus an entry per
    module that differs (its own params, or False for a dense one).

    ``mlx_lm.utils.load_model`` looks a module's path up in this dict before anything else, so the
    exported directory rebuilds exactly these layers.
    """
    counts = Counter(json.dumps(p, sort_keys=True) for p in params.values() if p)
    if not counts:
        return None
    default = json.loads(counts.most_common(1)[0][0])
    overrides = {path: p for path, p in params.items() if p != default}
    return {**default, "mode": "affine", **overrides}


def build_model(config: dict, weights: dict[str, mx.array], arch: Arch) -> tuple[nn.Module, dict]:
    """The model holding ``weights`` (evaluated, eval mode), and a copy of ``config`` with the
    ``quantization`` entry that rebuilds it, where any layer is quantized."""
    model = arch.module.Model(arch.module.ModelArgs.from_dict(config))
    if hasattr(model, "sanitize"):  # as mlx_lm.load does: gemma3 drops an absent lm_head here
        weights = model.sanitize(weights)
    params = module_quantization(model, weights)
    if quantization := quantization_entry(params):
        config = {**config, "quantization": quantization}
        nn.quantize(model, class_predicate=lambda path, _: params.get(path, False))
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model, config
