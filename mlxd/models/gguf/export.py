"""GGUF file -> a served mlx-lm model and tokenizer (``open_gguf``, ``load_gguf``), or an MLX model
directory that plain ``mlx_lm.load`` reads back as the same model (``export_mlx``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tokenizer_utils import TokenizerWrapper

from mlxd.models.gguf import archs
from mlxd.models.gguf.header import GgufHeader, read_header
from mlxd.models.gguf.hparams import model_config
from mlxd.models.gguf.repack import TypeReport
from mlxd.models.gguf.tensors import build_model, check_tensors, mlx_weights, read_and_report
from mlxd.models.gguf.tokenizer import TokenizerSpec, hf_tokenizer, tokenizer_spec, write_tokenizer


@dataclass(frozen=True)
class GgufModel:
    """A loaded GGUF file: the mlx-lm model, its tokenizer and config.json dict, and what each
    quantized tensor type became in MLX (with the error that cost)."""

    model: nn.Module
    tokenizer: TokenizerWrapper
    config: dict
    quantization_report: tuple[TypeReport, ...]


def check_supported(header: GgufHeader) -> None:
    """Refuse, before reading gigabytes, anything this importer would get wrong."""
    check_tensors(header, archs.lookup(header.metadata))


def _load(path: str | Path) -> tuple[nn.Module, TokenizerSpec, dict, list[TypeReport]]:
    path = Path(path)
    header = read_header(path)
    arch = archs.lookup(header.metadata)
    check_tensors(header, arch)
    config = model_config(header, arch)
    spec = tokenizer_spec(header.metadata, config["max_position_embeddings"])
    tensors, reports = read_and_report(path, header)
    config = arch.tensor_config(config, tensors)
    model, config = build_model(config, mlx_weights(tensors, config, arch), arch)
    eos = spec.eos_token_ids
    config = {
        **config,
        "bos_token_id": header.metadata.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
    }
    return model, spec, config, reports


def open_gguf(path: str | Path) -> GgufModel:
    """The model (weights evaluated, eval mode), tokenizer, config and quantization report."""
    model, spec, config, reports = _load(path)
    tokenizer = TokenizerWrapper(
        hf_tokenizer(spec), spec.detokenizer_class(), eos_token_ids=spec.eos_token_ids
    )
    return GgufModel(model, tokenizer, config, tuple(reports))


def load_gguf(path: str | Path) -> tuple[nn.Module, TokenizerWrapper, dict]:
    """Model, tokenizer, and its config.json dict (``open_gguf`` without the report)."""
    loaded = open_gguf(path)
    return loaded.model, loaded.tokenizer, loaded.config


def export_mlx(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write an MLX model directory that plain ``mlx_lm.load`` reads back as the same model."""
    model, spec, config, _ = _load(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(spec, out)
    return out
