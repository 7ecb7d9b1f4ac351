"""GGUF file -> a served mlx-lm model and tokenizer (``load_gguf``), or an MLX model directory
that plain ``mlx_lm.load`` reads back as the same model (``export_mlx``)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper

from mlxd.models.gguf.header import GgufHeader, read_header
from mlxd.models.gguf.hparams import check_architecture, model_config, with_rope_freqs
from mlxd.models.gguf.tensors import (
    ROPE_FREQS,
    build_model,
    check_tensors,
    mlx_weights,
    read_tensors,
)
from mlxd.models.gguf.tokenizer import TokenizerSpec, hf_tokenizer, tokenizer_spec, write_tokenizer


def check_supported(header: GgufHeader) -> None:
    """Refuse, before reading gigabytes, anything this importer would get wrong."""
    check_architecture(header.metadata)
    check_tensors(header)


def _load(path: str | Path) -> tuple[nn.Module, TokenizerSpec, dict]:
    path = Path(path)
    header = read_header(path)
    check_supported(header)
    config = model_config(header)
    spec = tokenizer_spec(header.metadata, config["max_position_embeddings"])
    tensors = read_tensors(path, header)
    if ROPE_FREQS in tensors:
        config = with_rope_freqs(config, tensors[ROPE_FREQS])
    model, config = build_model(config, mlx_weights(tensors, config))
    eos = spec.eos_token_ids
    config = {
        **config,
        "bos_token_id": header.metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
    }
    return model, spec, config


def load_gguf(path: str | Path) -> tuple[nn.Module, TokenizerWrapper, dict]:
    """Model (mlx-lm llama, weights evaluated, eval mode), tokenizer, and its config.json dict."""
    model, spec, config = _load(path)
    tokenizer = TokenizerWrapper(
        hf_tokenizer(spec), BPEStreamingDetokenizer, eos_token_ids=spec.eos_token_ids
    )
    return model, tokenizer, config


def export_mlx(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write an MLX model directory that plain ``mlx_lm.load`` reads back as the same model."""
    model, spec, config = _load(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(spec, out)
    return out
