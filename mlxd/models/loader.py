"""Loading the one model: an MLX model directory (what ``mlx_lm.load`` accepts) or a GGUF file.

Static imports only, so PyInstaller sees every module the binary needs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import load as load_mlx_dir

from mlxd.models import gguf, vlm
from mlxd.models.locate import gguf_named, is_gguf, not_a_model, served_name

__all__ = ["LoadedModel", "ModelLoadError", "load", "served_name"]

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_LENGTH = 4096  # when neither config nor tokenizer names one


class ModelLoadError(Exception):
    """The model cannot be served; the message says why (shown to the user at start)."""


@dataclass(frozen=True)
class LoadedModel:
    model: object
    tokenizer: TokenizerWrapper
    config: dict
    path: Path
    name: str  # the id served in /v1/models
    format: str  # "mlx" or "gguf"
    context_length: int
    load_seconds: float
    adapter: str | None = None  # the LoRA adapter directory applied at load (mlx-lm's format)
    vision: vlm.Vision | None = None  # a vision-language model's image side (models/vlm.py)
    # GGUF: per ggml tensor type, the MLX width it became and the error against the exact values
    quantization_report: tuple[gguf.TypeReport, ...] = ()

    @property
    def capabilities(self) -> list[str]:
        """What the model takes, for /v1/models and /v1/mlx/status."""
        return ["text", "vision"] if self.vision is not None else ["text"]


def load(path: str | Path, adapter: str | Path | None = None) -> LoadedModel:
    path = Path(path).expanduser()
    start = time.perf_counter()
    name = served_name(path)
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    report: tuple[gguf.TypeReport, ...] = ()
    vision = None
    if path.is_dir() and (vconfig := vlm.vlm_config(path)) is not None:
        model, tokenizer, config, vision = _load_vlm(path, vconfig, adapter)
        fmt = "mlx"
    elif path.is_dir():
        model, tokenizer, config = _load_dir(path)
        fmt = "mlx"
    elif is_gguf(path):  # by its magic bytes: a GGUF file named `model` is one too
        try:
            with gguf_named(path) as named:
                loaded = gguf.open_gguf(named)
        except gguf.UnsupportedModelError as exc:
            said = str(exc).replace(f"{path.name}.gguf", path.name)  # as the link was named
            # some messages name the file already: say it once
            raise ModelLoadError(said if path.name in said else f"{path.name}: {said}") from exc
        model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
        report, fmt = loaded.quantization_report, "gguf"
    else:
        raise ModelLoadError(not_a_model(path))
    if adapter is not None:
        adapter = str(Path(adapter).expanduser())
        _apply_adapter(model, adapter)
    if not getattr(tokenizer, "has_chat_template", False):
        log.warning("%s has no chat template: /v1/chat/completions will refuse requests", name)
    return LoadedModel(
        model,
        tokenizer,
        config,
        path,
        name,
        fmt,
        context_length(config, tokenizer),
        time.perf_counter() - start,
        adapter,
        vision,
        report,
    )


def _load_dir(path: Path):
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: no config.json (is this an MLX model directory?)")
    try:
        return load_mlx_dir(str(path), return_config=True)
    except (FileNotFoundError, ValueError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc


def _load_vlm(path: Path, config: dict, adapter):
    try:
        vlm.check_available(path, config)
    except vlm.VisionUnavailable as exc:
        raise ModelLoadError(str(exc)) from None
    if adapter is not None:
        raise ModelLoadError(
            f"{path.name}: --adapter is not supported with a vision-language model"
        )
    try:
        return vlm.load_vlm(path, config)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: a vision-language model mlxd cannot serve: {exc}") from exc


def _apply_adapter(model, adapter: str) -> None:
    """Add the LoRA (or DoRA) layers an ``mlx_lm.lora`` run saved (adapter_config.json and
    adapters.safetensors) to a loaded model, MLX or GGUF alike."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(
            f"adapter {adapter}: no adapter_config.json (is this an mlx-lm adapter directory?)"
        )
    # Imported here: mlx-lm's tuner pulls its trainer, rich and more, which only --adapter needs.
    from mlx_lm.tuner.utils import load_adapters

    try:
        load_adapters(model, adapter)
    # mx.load raises RuntimeError for a missing or broken adapters.safetensors.
    except (OSError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        raise ModelLoadError(f"adapter {adapter}: {exc}") from exc
    model.eval()
    # Materialize here: lazy arrays made on this (loader) thread cannot be evaluated on the
    # generation thread ("no Stream(cpu, n) in current thread").
    mx.eval(model.parameters())


def context_length(config: dict, tokenizer) -> int:
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_ctx"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    limit = getattr(tokenizer, "model_max_length", None)
    # HF tokenizers use a huge sentinel (int(1e30)) for "no limit".
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    return DEFAULT_CONTEXT_LENGTH
