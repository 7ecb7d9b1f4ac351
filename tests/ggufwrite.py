"""Tiny random models of each mlx-lm architecture we import from GGUF, and GGUF files written from
them the way llama.cpp's convert_hf_to_gguf.py writes them: tensor names from gguf-py's own
TensorNameMap, the metadata keys its model classes add, llama's Q/K permutation, gemma's ``1 + w``
norms. ``write_model_gguf`` returns the weights the file decodes to (in mlx-lm's names and
layout): loading those into the mlx-lm model gives the reference logits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from gguf import MODEL_ARCH
from gguf import GGMLQuantizationType as Q
from mlx.utils import tree_flatten, tree_map_with_path
from tokenizers import Tokenizer

from ggmlblocks import encode
from tinymodel import SPECIAL_TOKENS, train_tokenizer, write_tokenizer

TOKEN_NORMAL, TOKEN_CONTROL = 1, 3


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF rotary halves -> interleaved pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama_cpp_unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of ``llama_cpp_permute``."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def tokenizer_metadata(tok: Tokenizer, tokenizer_config: dict, pre: str) -> dict:
    """tokenizer.ggml.* as llama.cpp writes them for a byte-level BPE (its get_vocab_base)."""
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    merges = json.loads(tok.to_str())["model"]["merges"]
    ids = {role: vocab.get(tokenizer_config.get(f"{role}_token")) for role in ("bos", "eos", "pad")}
    md = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [
            TOKEN_CONTROL if t in special else TOKEN_NORMAL for t in tokens
        ],
        "tokenizer.ggml.merges": [" ".join(m) for m in merges],
        "tokenizer.ggml.add_bos_token": bool(tokenizer_config.get("add_bos_token")),
        "tokenizer.ggml.eos_token_id": ids["eos"],
        "tokenizer.ggml.padding_token_id": ids["pad"],
        "tokenizer.chat_template": tokenizer_config.get("chat_template"),
    }
    if ids["bos"] is not None:
        md["tokenizer.ggml.bos_token_id"] = ids["bos"]
    return {k: v for k, v in md.items() if v is not None}


WRITERS = {  # metadata key -> GGUFWriter method
    "tokenizer.ggml.model": "add_tokenizer_model",
    "tokenizer.ggml.pre": "add_tokenizer_pre",
    "tokenizer.ggml.tokens": "add_token_list",
    "tokenizer.ggml.token_type": "add_token_types",
    "tokenizer.ggml.merges": "add_token_merges",
    "tokenizer.ggml.add_bos_token": "add_add_bos_token",
    "tokenizer.ggml.bos_token_id": "add_bos_token_id",
    "tokenizer.ggml.eos_token_id": "add_eos_token_id",
    "tokenizer.ggml.padding_token_id": "add_pad_token_id",
    "tokenizer.chat_template": "add_chat_template",
    "tokenizer.ggml.scores": "add_token_scores",
    "tokenizer.ggml.unknown_token_id": "add_unk_token_id",
    "tokenizer.ggml.add_space_prefix": "add_add_space_prefix",
}


# -- Tiny models ------------------------------------------------------------------------------

BASE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 1024,
}
# mlx-lm model_type -> config beyond BASE (head sizes other than hidden / heads where the
# architecture allows one, so key_length is exercised)
CONFIGS = {
    "llama": {"rope_theta": 10000.0, "tie_word_embeddings": False},
    "mistral": {"rope_theta": 1e6, "head_dim": 16, "tie_word_embeddings": False},
    "qwen2": {"rope_theta": 1e6, "tie_word_embeddings": True},
    "qwen3": {"rope_theta": 1e6, "head_dim": 32, "tie_word_embeddings": True},
    "phi3": {"rope_theta": 10000.0, "tie_word_embeddings": False, "pad_token_id": None},
    "gemma2": {
        "head_dim": 32,
        "rope_theta": 10000.0,
        "query_pre_attn_scalar": 32,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "sliding_window": 4096,
    },
    "gemma3_text": {
        "num_hidden_layers": 6,  # llama.cpp's fixed pattern: layer 5 global, 0-4 sliding
        "head_dim": 32,
        "rope_theta": 1e6,
        "rope_local_base_freq": 10000.0,
        "query_pre_attn_scalar": 32,
        "sliding_window": 8,  # short, so the test prompt crosses it
        "sliding_window_pattern": 6,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
    },
}


def build_arch_model(path: Path, model_type: str, seed: int = 0, **overrides) -> Path:
    """A random-weight mlx-lm model directory of ``model_type`` (``mlx_lm.load`` accepts it)."""
    from mlx_lm.utils import _get_classes

    path.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    config = {
        "model_type": model_type,
        **BASE,
        **CONFIGS[model_type],
        "vocab_size": tok.get_vocab_size(),
        "eos_token_id": SPECIAL_TOKENS.index("<|im_end|>"),
        **overrides,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    mx.random.seed(seed)

    def randomize(name: str, p: mx.array) -> mx.array:
        if "norm" in name:  # around 1 (gemma's around 0: it multiplies by 1 + w)
            base = 0.0 if model_type.startswith("gemma") else 1.0
            return base + 0.1 * mx.random.normal(p.shape)
        scale = 1.0 if "embed_tokens" in name else 0.1
        return scale * mx.random.normal(p.shape)

    model.update(tree_map_with_path(randomize, model.parameters()))
    weights = dict(tree_flatten(model.parameters()))
    if model_type == "gemma3_text":  # its lm_head is the embedding unless a checkpoint has one
        weights.pop("lm_head.weight")
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    write_tokenizer(path, tok)
    return path


# -- GGUF, as convert_hf_to_gguf.py writes it -------------------------------------------------

GGUF_ARCH = {  # mlx-lm model_type -> (gguf-py MODEL_ARCH, writes general.architecture as)
    "llama": MODEL_ARCH.LLAMA,
    "mistral": MODEL_ARCH.LLAMA,  # LlamaModel converts MistralForCausalLM too
    "qwen2": MODEL_ARCH.QWEN2,
    "qwen3": MODEL_ARCH.QWEN3,
    "phi3": MODEL_ARCH.PHI3,
    "gemma2": MODEL_ARCH.GEMMA2,
    "gemma3_text": MODEL_ARCH.GEMMA3,
}


def _base_params(w: gguf.GGUFWriter, c: dict) -> None:
    """TextModel.set_gguf_parameters."""
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    if "head_dim" in c:
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
    if (scaling := c.get("rope_scaling")) and scaling.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])


def _llama_params(w, c) -> None:  # LlamaModel: also the vocab size and rotary dimensions
    _base_params(w, c)
    w.add_vocab_size(c["vocab_size"])
    w.add_rope_dimension_count(c.get("head_dim", c["hidden_size"] // c["num_attention_heads"]))


def _phi3_params(w, c) -> None:  # Phi3MiniModel.set_gguf_parameters
    n_embd, n_head = c["hidden_size"], c["num_attention_heads"]
    orig = c.get("original_max_position_embeddings", c["max_position_embeddings"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_rope_scaling_orig_ctx_len(orig)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_head_count(n_head)
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_rope_dimension_count(int(c.get("partial_rotary_factor", 1.0) * n_embd) // n_head)
    w.add_rope_freq_base(c["rope_theta"])
    w.add_sliding_window(c.get("sliding_window") or 0)
    if c.get("rope_scaling"):
        scale = c["max_position_embeddings"] / orig
        w.add_rope_scaling_attn_factors(np.sqrt(1 + np.log(scale) / np.log(orig)))


def _gemma2_params(w, c) -> None:  # Gemma2Model.set_gguf_parameters: no rope base written
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_attn_logit_softcapping(c["attn_logit_softcapping"])
    w.add_final_logit_softcapping(c["final_logit_softcapping"])
    w.add_sliding_window(c["sliding_window"])


def _gemma3_params(w, c) -> None:  # Gemma3Model.set_gguf_parameters
    _base_params(w, c)
    if c.get("sliding_window_pattern") != 1:
        w.add_sliding_window(c["sliding_window"])


PARAMS = {
    "llama": _llama_params,
    "mistral": _llama_params,
    "qwen2": _base_params,
    "qwen3": _base_params,
    "phi3": _phi3_params,
    "gemma2": _gemma2_params,
    "gemma3_text": _gemma3_params,
}


def _extra_tensors(c: dict) -> list[tuple[str, np.ndarray]]:
    """Phi3MiniModel.generate_extra_tensors: LongRoPE's factors."""
    if not (scaling := c.get("rope_scaling")) or "long_factor" not in scaling:
        return []
    return [
        ("rope_factors_long.weight", np.array(scaling["long_factor"], np.float32)),
        ("rope_factors_short.weight", np.array(scaling["short_factor"], np.float32)),
    ]


def store(data: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(what the file stores, what it decodes to: gguf-py's own dequantize) for one tensor."""
    if qtype in (Q.F32, Q.F16):
        stored = data.astype(np.float32 if qtype == Q.F32 else np.float16)
        return stored, stored.astype(np.float32)
    stored = encode(data, qtype)
    return stored, gguf.quants.dequantize(stored, qtype).reshape(data.shape)


def write_model_gguf(
    path: Path,
    model_dir: Path,
    qtype_of: Callable[[str], Q] = lambda name: Q.F32,
    *,
    edit: Callable[[gguf.GGUFWriter], None] = lambda w: None,
    vocab: dict | None = None,
) -> dict[str, mx.array]:
    """Write ``model_dir`` as GGUF; ``qtype_of(gguf name)`` picks each matrix's type, ``vocab``
    replaces the directory's tokenizer (``tokenizer.ggml.*`` keys). Returns the weights the file
    decodes to, by mlx-lm name and layout: the reference."""
    c = json.loads((model_dir / "config.json").read_text())
    kind, gemma = c["model_type"], c["model_type"].startswith("gemma")
    names = gguf.get_tensor_name_map(GGUF_ARCH[kind], c["num_hidden_layers"])
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[GGUF_ARCH[kind]])
    PARAMS[kind](w, c)
    edit(w)
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    for key, value in (vocab or tokenizer_metadata(tok, tok_config, "gpt-2")).items():
        if key in WRITERS:
            getattr(w, WRITERS[key])(value)
    permuted = {
        "self_attn.q_proj": c["num_attention_heads"],
        "self_attn.k_proj": c["num_key_value_heads"],
    }
    reference = {}
    for name, value in sorted(mx.load(str(model_dir / "model.safetensors")).items()):
        base, _, suffix = name.rpartition(".")
        data = np.array(value.astype(mx.float32))
        if gemma and base.endswith("norm"):  # GemmaModel.modify_tensors: norm weights + 1
            data = data + 1
        heads = next((h for p, h in permuted.items() if base.endswith(p)), None)
        if GGUF_ARCH[kind] == MODEL_ARCH.LLAMA and heads:
            data = llama_cpp_permute(data, heads)
        gname = f"{names.get_name(base)}.{suffix}"
        stored, decoded = store(data, Q.F32 if data.ndim == 1 else qtype_of(gname))
        w.add_tensor(gname, stored, raw_dtype=None if stored.dtype != np.uint8 else qtype_of(gname))
        if GGUF_ARCH[kind] == MODEL_ARCH.LLAMA and heads:  # rows quantize one by one
            decoded = llama_cpp_unpermute(decoded, heads)
        reference[name] = mx.array(decoded - 1 if gemma and base.endswith("norm") else decoded)
    for name, data in _extra_tensors(c):
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def _tensor_bytes(path: Path):
    """(header, name -> (ggml type, shape, uint8 rows of blocks)), read with mlxd's header reader
    (gguf-py's GGUFReader takes 45 s over SmolLM2's vocabulary)."""
    from mlxd.models.gguf.header import read_header

    header = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for info in header.tensors.values():
        block, size = gguf.GGML_QUANT_SIZES[Q(info.ggml_type)]
        rows, cols = int(np.prod(info.shape[:-1])), info.shape[-1]
        raw = data[info.offset : info.offset + rows * cols // block * size].reshape(rows, -1)
        out[info.name] = (Q(info.ggml_type), info.shape, np.array(raw))
    return header, out


def read_exact(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """A GGUF file's metadata, and every tensor as float32 at the values gguf-py decodes."""
    header, tensors = _tensor_bytes(path)
    exact = {
        name: gguf.quants.dequantize(raw, qtype).reshape(shape).astype(np.float32)
        for name, (qtype, shape, raw) in tensors.items()
    }
    return header.metadata, exact


def requantized_copy(src: Path, dst: Path, qtype_of: Callable[[str], Q | None]) -> Path:
    """``src`` with the matrices ``qtype_of(name)`` names re-encoded from their exact values, the
    other tensors and the metadata copied as they are: a real model in the block types a test
    wants."""
    header, tensors = _tensor_bytes(src)
    w = gguf.GGUFWriter(str(dst), header.metadata["general.architecture"])
    for key, value in header.metadata.items():
        if key not in ("general.architecture", "general.alignment"):
            w.add_key_value(key, value, gguf.GGUFValueType.get_type(value))
    for name, (qtype, shape, raw) in tensors.items():
        if (target := qtype_of(name)) is None or len(shape) == 1:
            w.add_tensor(name, raw.reshape(*shape[:-1], -1), raw_dtype=qtype)  # bytes per row
            continue
        exact = gguf.quants.dequantize(raw, qtype).reshape(shape).astype(np.float32)
        w.add_tensor(name, encode(exact, target), raw_dtype=target)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst
