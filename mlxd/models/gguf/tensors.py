"""GGUF tensor data -> mlx-lm llama weights: which types load faithfully, llama.cpp's tensor names
and rotary row permutation undone, and MLX's quantization read off the packed shapes.

``mx.load`` reads GGUF tensors natively: F32/F16 come back as arrays, and Q4_0, Q4_1 and Q8_0 as
MLX's own affine quantized triples (packed uint32 weight, float16 scales and biases, groups of 32).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from mlxd.models.gguf.header import GgufHeader, TensorInfo, UnsupportedModelError, ggml_type_name

GGML_BF16 = 30
# What mx.load returns unchanged or as an exact MLX quantized triple. BF16 it narrows to float16
# (overflow past 65504), so we read those bytes ourselves. Everything else is refused: mx.load
# expands K-quants to float16 (4x the memory of the file) and errors on or drops the rest.
SUPPORTED_TENSOR_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0", GGML_BF16: "BF16"}
GGML_GROUP_SIZE = 32  # every ggml block type mx.load keeps quantized has 32 weights per block

# llama.cpp tensor names -> mlx-lm llama module paths.
GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases)")
ROPE_FREQS = "rope_freqs.weight"  # llama 3.1+ rope scaling, as per-frequency divisors


def check_tensors(header: GgufHeader) -> None:
    """Refuse tensor types MLX cannot load faithfully, and tensors llama has no place for."""
    bad = [t for t in header.tensors.values() if t.ggml_type not in SUPPORTED_TENSOR_TYPES]
    if bad:
        kinds = ", ".join(sorted({ggml_type_name(t.ggml_type) for t in bad}))
        loadable = ", ".join(SUPPORTED_TENSOR_TYPES.values())
        raise UnsupportedModelError(
            f"tensor {bad[0].name} has type {ggml_type_name(bad[0].ggml_type)} ({len(bad)} "
            f"tensors of type {kinds}); MLX loads only {loadable}"
        )
    if "token_embd.weight" not in header.tensors:
        raise UnsupportedModelError("GGUF without token_embd.weight")
    for name in header.tensors:
        if name != ROPE_FREQS:
            mlx_name(name)  # raises on a tensor llama has no place for


def mlx_name(gguf_name: str) -> str:
    if m := BLOCK_NAME.fullmatch(gguf_name):
        if m[2] in BLOCK_TENSORS:
            return f"model.layers.{m[1]}.{BLOCK_TENSORS[m[2]]}.{m[3]}"
    else:
        base, _, part = gguf_name.rpartition(".")
        if base in GLOBAL_TENSORS and part in ("weight", "scales", "biases"):
            return f"{GLOBAL_TENSORS[base]}.{part}"
    raise UnsupportedModelError(f"tensor {gguf_name} has no place in a llama model")


def unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's rotary permutation of Q/K output rows.

    Its converter maps HF rows (head, half, i) to (head, i, half); quantization groups run along
    the input dimension, so packed weights, scales and biases all take the same row shuffle.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def read_tensors(path: Path, header: GgufHeader) -> dict[str, mx.array]:
    """Every tensor of the file under its GGUF name, BF16 kept BF16."""
    tensors = cast(dict[str, mx.array], mx.load(str(path)))  # a .gguf loads as a dict
    for info in header.tensors.values():
        if info.ggml_type == GGML_BF16:
            tensors[info.name] = _read_bf16(path, info)
    return tensors


def _read_bf16(path: Path, info: TensorInfo) -> mx.array:
    count = int(np.prod(info.shape))
    raw = np.fromfile(path, dtype=np.uint16, count=count, offset=info.offset)
    return mx.array(raw).view(mx.bfloat16).reshape(info.shape)


def mlx_weights(tensors: dict[str, mx.array], config: dict) -> dict[str, mx.array]:
    """mlx-lm llama weights from ``read_tensors``: renamed, Q/K rows unpermuted, rope_freqs left
    out (it is config, not a weight: see ``hparams.with_rope_freqs``)."""
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out = {}
    for name, w in tensors.items():
        if name == ROPE_FREQS:
            continue
        m = BLOCK_NAME.fullmatch(name)
        if m and m[2] in heads:
            w = unpermute_rows(w, heads[m[2]])
        out[mlx_name(name)] = w
    return out


def module_quantization(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, dict | bool]:
    """Per quantizable module: its MLX quantization params (read off the packed shapes), or
    False."""
    params: dict[str, dict | bool] = {}
    leaves = cast(
        list[tuple[str, Any]], tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
    )
    for path, module in leaves:
        if not hasattr(module, "to_quantized"):
            continue
        if (scales := weights.get(f"{path}.scales")) is None:
            params[path] = False
            continue
        in_dims = scales.shape[-1] * GGML_GROUP_SIZE
        bits = weights[f"{path}.weight"].shape[-1] * 32 // in_dims
        params[path] = {"group_size": GGML_GROUP_SIZE, "bits": bits}
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


def build_model(config: dict, weights: dict[str, mx.array]) -> tuple[nn.Module, dict]:
    """The llama model holding ``weights`` (evaluated, eval mode), and a copy of ``config`` with
    the ``quantization`` entry that rebuilds it, where any layer is quantized."""
    model = llama.Model(llama.ModelArgs.from_dict(config))
    params = module_quantization(model, weights)
    if quantization := quantization_entry(params):
        config = {**config, "quantization": quantization}
        nn.quantize(model, class_predicate=lambda path, _: params.get(path, False))
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model, config
