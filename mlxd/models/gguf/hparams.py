"""GGUF ``llama.*`` metadata -> the mlx-lm/HF config.json fields, rope scaling included.

llama 3's rope scaling survives in GGUF only as a ``rope_freqs`` tensor; recovered here as
mlx-lm's "llama3" rope_scaling.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_lm.models.rope_utils import initialize_rope

from mlxd.models.gguf.header import GgufHeader, UnsupportedModelError

SUPPORTED_ARCHITECTURES = {"llama"}

# Llama 3.1/3.2's config.json values; GGUF keeps only the factors they produce, which we check.
LLAMA3_ROPE = {
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
ROPE_FACTOR_RTOL = 1e-3


def check_architecture(md: dict) -> None:
    """Refuse any architecture but a dense llama."""
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture {arch!r} (supported: {sorted(SUPPORTED_ARCHITECTURES)})"
        )
    if md.get(f"{arch}.expert_count", 0):
        raise UnsupportedModelError("mixture-of-experts llama (expert_count > 0)")


def model_config(header: GgufHeader) -> dict:
    """mlx-lm/HF config.json fields from ``llama.*`` metadata (quantization and llama3 rope
    scaling added later)."""
    md = header.metadata

    def hp(key, *default):
        if f"llama.{key}" not in md and not default:
            raise UnsupportedModelError(f"GGUF lacks llama.{key}")
        return md.get(f"llama.{key}", *default)

    n_heads, hidden = hp("attention.head_count"), hp("embedding_length")
    head_dim = hp("attention.key_length", hidden // n_heads)
    if (
        hp("attention.value_length", head_dim) != head_dim
        or hp("rope.dimension_count", head_dim) != head_dim
    ):
        raise UnsupportedModelError(
            "value length or rotary dimensions that differ from the head size"
        )
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": hp("block_count"),
        "intermediate_size": hp("feed_forward_length"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": hp("attention.head_count_kv", n_heads),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(hp("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(hp("rope.freq_base", 10000.0)),
        "max_position_embeddings": hp("context_length"),
        "vocab_size": header.tensors["token_embd.weight"].shape[0],
        "tie_word_embeddings": "output.weight" not in header.tensors,
    }
    scaling = md.get("llama.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": _f32(md["llama.rope.scaling.factor"])}
    elif scaling != "none":
        raise UnsupportedModelError(f"rope scaling type {scaling!r}")
    return config


def _f32(x: float) -> float:
    # GGUF stores float32: 1e-5 arrives as 9.99999974e-06. Keep the shortest decimal that reads
    # back as the same float32, so config.json says 1e-05 like the original.
    return float(str(np.float32(x)))


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
