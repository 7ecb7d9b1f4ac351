"""The architectures we load from GGUF: llama.cpp's tensor names and metadata -> mlx-lm's model
classes, one table entry each.

What llama.cpp's converter (convert_hf_to_gguf.py, gguf-py's tensor_mapping.py) changed on the
way in, and each entry undoes:
- tensor names (``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``, ...);
- for llama only, Q and K rows permuted for its interleaved ("GPT-J") rotary layout;
- for gemma, RMSNorm weights stored as ``1 + w`` (HF's Gemma norm multiplies by ``1 + w``);
- hyperparameters llama.cpp derives instead of storing (gemma's attention scale, sliding window
  pattern and local rope base), recomputed the way llama-model.cpp does.

Mistral's GGUF files say ``llama`` (its converter writes them so), and load as llama.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import mlx.core as mx
from mlx_lm.models import gemma2, gemma3_text, llama, phi3, qwen2, qwen3

from mlxd.models.gguf.header import UnsupportedModelError
from mlxd.models.gguf.hparams import Hparams, f32, with_rope_freqs

GLOBAL_TENSORS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LLAMA_BLOCK = {
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
QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
PHI3_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attn.qkv_proj",  # phi3 keeps Q, K and V fused, as HF does
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.gate_up_proj",  # gate and up fused; llama.cpp splits them at run time
    "ffn_down": "mlp.down_proj",
}
GEMMA_BLOCK = {
    **LLAMA_BLOCK,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Rope parameters llama.cpp keeps as tensors: config, not weights.
ROPE_FREQS = "rope_freqs.weight"  # llama 3.1+ rope scaling, as per-frequency divisors
ROPE_LONG, ROPE_SHORT = "rope_factors_long.weight", "rope_factors_short.weight"  # phi3 LongRoPE

# llama-model.cpp: Gemma 2 and 3 default to these when the file does not say.
GEMMA2_SOFTCAPS = {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}
GEMMA3_SWA_PATTERN = 6  # every 6th layer global, the rest sliding-window
GEMMA3_LOCAL_ROPE_BASE = 10000.0
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}  # llama.cpp scales 27B's queries differently


@dataclass(frozen=True)
class Arch:
    name: str  # general.architecture
    model_type: str  # the mlx-lm model_type written to config.json
    module: ModuleType  # mlx_lm.models.<x>, with Model and ModelArgs (a static import)
    block: dict[str, str]  # blk.N.<gguf name> -> model.layers.N.<mlx-lm path>
    permute_qk: bool = False  # Q/K rows interleaved for llama.cpp's rope (llama only)
    norm_shift: float = 0.0  # subtracted from every *norm weight (gemma stores 1 + w)
    partial_rotary: bool = False  # rope.dimension_count may be below the head size
    extra: Callable[[Hparams, dict], dict] = lambda hp, config: {}
    config_tensors: frozenset[str] = field(default_factory=frozenset)
    # config from the config tensors present: (config, tensors) -> config
    tensor_config: Callable[[dict, dict], dict] = lambda config, tensors: config


def _llama(hp: Hparams, config: dict) -> dict:
    bias = "blk.0.attn_q.bias" in hp.header.tensors
    return {"attention_bias": bias} if bias else {}


def _llama_rope(config: dict, tensors: dict) -> dict:
    return with_rope_freqs(config, tensors[ROPE_FREQS]) if ROPE_FREQS in tensors else config


def _fixed_head(hp: Hparams, config: dict) -> dict:
    """qwen2 and phi3 in mlx-lm derive the head size as hidden // heads."""
    if config["head_dim"] != config["hidden_size"] // config["num_attention_heads"]:
        raise UnsupportedModelError(f"{hp.arch} with a head size other than hidden / heads")
    return {}


def _phi3(hp: Hparams, config: dict) -> dict:
    _fixed_head(hp, config)
    if "rope_scaling" in config:  # mlx-lm's phi3 takes linear scaling only with LongRoPE keys
        raise UnsupportedModelError("phi3 with rope scaling other than LongRoPE")
    dims = hp("rope.dimension_count", config["head_dim"])
    return {
        "partial_rotary_factor": dims / config["head_dim"],
        "original_max_position_embeddings": hp(
            "rope.scaling.original_context_length", config["max_position_embeddings"]
        ),
    }


def _phi3_longrope(config: dict, tensors: dict) -> dict:
    """LongRoPE's per-frequency factors, kept by llama.cpp as two tensors, back in rope_scaling
    (mlx-lm recomputes the attention factor the converter stored from the context lengths)."""
    if ROPE_LONG not in tensors:
        return config
    long, short = (
        [f32(x) for x in tensors[k].astype(mx.float32).tolist()] for k in (ROPE_LONG, ROPE_SHORT)
    )
    return {
        **config,
        "rope_scaling": {"type": "longrope", "long_factor": long, "short_factor": short},
    }


def _gemma_query_scale(hp: Hparams, config: dict) -> int:
    """llama-model.cpp: queries scale by hidden / heads (integer division there too) on the 27B
    models, else the head size; an int, as HF's config (transformers checks the type)."""
    if config["num_hidden_layers"] == GEMMA_27B_LAYERS[hp.arch]:
        return config["hidden_size"] // config["num_attention_heads"]
    return config["head_dim"]


def _gemma2(hp: Hparams, config: dict) -> dict:
    if not config["tie_word_embeddings"]:
        raise UnsupportedModelError("gemma2 with an output.weight (mlx-lm's gemma2 ties it)")
    caps = {k: f32(hp(k, v)) for k, v in GEMMA2_SOFTCAPS.items()}
    return {**caps, "query_pre_attn_scalar": _gemma_query_scale(hp, config)}


def _gemma3(hp: Hparams, config: dict) -> dict:
    if hp("final_logit_softcapping", 0.0):
        raise UnsupportedModelError("gemma3 with final_logit_softcapping (mlx-lm has none)")
    window = hp("attention.sliding_window", 0)
    return {
        "query_pre_attn_scalar": _gemma_query_scale(hp, config),
        "rope_local_base_freq": GEMMA3_LOCAL_ROPE_BASE,
        # No window: every layer global, as llama.cpp runs such a file.
        "sliding_window": window or config["max_position_embeddings"],
        "sliding_window_pattern": _swa_pattern(hp) if window else 1,
    }


def _swa_pattern(hp: Hparams) -> int:
    """Gemma 3's period of global layers: llama.cpp's fixed 6, or a per-layer flag list
    (newer converters) that must repeat with one global layer per period."""
    flags = hp.md.get(f"{hp.arch}.attention.sliding_window_pattern")
    if flags is None:
        return GEMMA3_SWA_PATTERN
    if isinstance(flags, int):
        return flags
    period = flags.index(False) + 1 if False in flags else len(flags) + 1
    if any(flag != ((i + 1) % period != 0) for i, flag in enumerate(flags)):
        raise UnsupportedModelError("gemma3 with an irregular sliding-window layer pattern")
    return period


ARCHITECTURES = {
    a.name: a
    for a in (
        Arch(
            "llama",
            "llama",
            llama,
            LLAMA_BLOCK,
            permute_qk=True,
            extra=_llama,
            config_tensors=frozenset({ROPE_FREQS}),
            tensor_config=_llama_rope,
        ),
        Arch("qwen2", "qwen2", qwen2, LLAMA_BLOCK, extra=_fixed_head),
        Arch("qwen3", "qwen3", qwen3, {**LLAMA_BLOCK, **QK_NORMS}),
        Arch(
            "phi3",
            "phi3",
            phi3,
            PHI3_BLOCK,
            partial_rotary=True,
            extra=_phi3,
            config_tensors=frozenset({ROPE_LONG, ROPE_SHORT}),
            tensor_config=_phi3_longrope,
        ),
        Arch("gemma2", "gemma2", gemma2, GEMMA_BLOCK, norm_shift=1.0, extra=_gemma2),
        Arch(
            "gemma3",
            "gemma3_text",
            gemma3_text,
            {**GEMMA_BLOCK, **QK_NORMS},
            norm_shift=1.0,
            extra=_gemma3,
        ),
    )
}


def lookup(md: dict) -> Arch:
    """The entry for the file's ``general.architecture``, or refuse naming it."""
    name = md.get("general.architecture")
    if name not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"architecture {name!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[name]
