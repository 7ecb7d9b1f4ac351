"""GGUF ``<arch>.*`` metadata -> the mlx-lm/HF config.json fields, rope scaling included.

The fields every supported architecture shares are read here; what one architecture adds
(softcapping, sliding windows, partial rotary) comes from its entry in ``archs``. llama 3's rope
scaling survives in GGUF only as a ``rope_freqs`` tensor; recovered here as mlx-lm's "llama3".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import numpy as np
from mlx_lm.models.rope_utils import initialize_rope

from mlxd.models.gguf.header import GgufHeader, UnsupportedModelError

if TYPE_CHECKING:
    from mlxd.models.gguf.archs import Arch

# Llama 3.1/3.2's config.json values; GGUF keeps only the factors they produce, which we check.
LLAMA3_ROPE = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ROPE_FACTOR_RTOL = 1e-3
DEFAULT_ROPE_THETA = 10000.0  # llama.cpp's default when a file names none


class Hparams:
    """``<arch>.<key>`` metadata lookups for one file; a missing required key is refused."""

    def __init__(self, header: GgufHeader, arch: str) -> None:
        self.header, self.md, self.arch = header, header.metadata, arch

    def __call__(self, key: str, *default):
        full = f"{self.arch}.{key}"
        if full not in self.md and not default:
            raise UnsupportedModelError(f"GGUF lacks {full}")
        value = self.md.get(full, *default)
        if isinstance(value, list):  # per-layer values (Nemotron-style): not one mlx-lm config
            raise UnsupportedModelError(f"{full} differs per layer")
        return value


def f32(x: float) -> float:
    # GGUF stores float32: 1e-5 arrives as 9.99999974e-06. Keep the shortest decimal that reads
    # back as the same float32, so config.json says 1e-05 like the original.
    return float(str(np.float32(x)))


def check_moe(hp: Hparams) -> None:
    if hp("expert_count", 0):
        raise UnsupportedModelError(f"mixture-of-experts {hp.arch} (expert_count > 0)")


def head_dim(hp: Hparams) -> int:
    """The attention head size; value heads of another size are refused."""
    n_heads, hidden = hp("attention.head_count"), hp("embedding_length")
    size = hp("attention.key_length", hidden // n_heads)
    if hp("attention.value_length", size) != size:
        raise UnsupportedModelError("value heads of another size than the key heads")
    return size


def model_config(header: GgufHeader, arch: Arch) -> dict:
    """mlx-lm/HF config.json fields (quantization and llama3 rope scaling added later)."""
    hp = Hparams(header, arch.name)
    check_moe(hp)
    config = {
        "model_type": arch.model_type,
        "hidden_size": hp("embedding_length"),
        "num_hidden_layers": hp("block_count"),
        "intermediate_size": hp("feed_forward_length"),
        "num_attention_heads": hp("attention.head_count"),
        "num_key_value_heads": hp("attention.head_count_kv", hp("attention.head_count")),
        "head_dim": head_dim(hp),
        "rms_norm_eps": f32(hp("attention.layer_norm_rms_epsilon")),
        "rope_theta": f32(hp("rope.freq_base", DEFAULT_ROPE_THETA)),
        "max_position_embeddings": hp("context_length"),
        "vocab_size": header.tensors["token_embd.weight"].shape[0],
        "tie_word_embeddings": "output.weight" not in header.tensors,
    }
    if rope_scaling := _rope_scaling(hp):
        config["rope_scaling"] = rope_scaling
    if (
        not arch.partial_rotary
        and hp("rope.dimension_count", config["head_dim"]) != (config["head_dim"])
    ):
        raise UnsupportedModelError("rotary dimensions that differ from the head size")
    return {**config, **arch.extra(hp, config)}


def _rope_scaling(hp: Hparams) -> dict | None:
    scaling = hp("rope.scaling.type", "none")
    if scaling == "linear":
        return {"type": "linear", "factor": f32(hp("rope.scaling.factor"))}
    if scaling != "none":
        raise UnsupportedModelError(f"rope scaling type {scaling!r}")
    return None


def llama3_rope_scaling(factors: mx.array, config: dict) -> dict:
    """The mlx-lm "llama3" rope_scaling that yields ``rope_freqs.weight``, or refuse."""
    dims, base = config["head_dim"], config["rope_theta"]
    if factors.shape != (dims // 2,):
        raise UnsupportedModelError(
            f"rope_freqs.weight of shape {factors.shape} for head size {dims}"
        )
    scaling = {"rope_type": "llama3", "factor": factors.max().item(), **LLAMA3_ROPE}
    rope = initialize_rope(dims, base, False, scaling, config["max_position_embeddings"])
    # Llama3RoPE keeps base**(2i/d) times the factor per frequency; divide the base part out.
    expected = rope._freqs / base ** (mx.arange(0, dims, 2) / dims)
    if not mx.allclose(expected, factors.astype(mx.float32), rtol=ROPE_FACTOR_RTOL).item():
        raise UnsupportedModelError("rope_freqs.weight that matches no llama3 rope scaling")
    return scaling


def with_rope_freqs(config: dict, factors: mx.array) -> dict:
    """A copy of ``config`` whose rope_scaling is the llama3 one ``rope_freqs.weight`` stands
    for (``config`` itself is left as it was)."""
    return {**config, "rope_scaling": llama3_rope_scaling(factors, config)}
