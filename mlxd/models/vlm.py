"""Vision-language models: a model directory that ``mlx_vlm.load`` accepts, served by mlxd.

mlx-vlm is an optional extra (``pip install "mlxd[vision]"``): it is imported here, inside
``load_vlm``, only when the model directory is a VLM, so the text path, ``--stop`` and
``--version`` stay as light as before. Detection reads config.json alone (stdlib).

What the engine gets: mlx-vlm's model computes the merged text + image embeddings of a prompt (its
vision tower and projector); the tokens are decoded by an mlx-lm model of the same language model,
built from ``text_config`` and sharing mlx-vlm's weight arrays (no copy), so the continuous batch,
the solo path, weight routing and warm-up treat a VLM like any text model. A family whose language
model mlx-lm does not build with the same weights (Qwen2-VL's multimodal rotary positions, say) is
refused at start with the reason.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

VISION_INSTALL = 'pip install "mlxd[vision]"'
# Where no size is found in the processor's configuration: CLIP's input side, the most common.
DEFAULT_IMAGE_SIDE = 336
SIDE_KEYS = ("height", "width", "shortest_edge", "longest_edge", "max_height", "max_width")


class VisionUnavailable(Exception):
    """A VLM was given, but this install cannot serve it; the message says which one can."""


@dataclass(frozen=True)
class Vision:
    """What serving images needs besides the text model (read-only once loaded)."""

    model: object  # mlx-vlm's Model: get_input_embeddings(input_ids, pixel_values, ...)
    processor: object  # its processor: chat text + PIL images -> input_ids, pixel_values, ...
    model_type: str
    image_token_id: int
    image_side: int  # pixels: larger images are scaled down to this before the processor


def vlm_config(path: Path) -> dict | None:
    """config.json of a VLM directory (one with a ``vision_config``), else None."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and isinstance(config.get("vision_config"), dict):
        return config
    return None


def frozen() -> bool:
    """True inside the PyInstaller binary (which does not carry mlx-vlm, PIL or OpenCV)."""
    return bool(getattr(sys, "frozen", False))


def check_available(path: Path, config: dict) -> None:
    """Raise ``VisionUnavailable`` naming the install that serves this VLM, if this one cannot."""
    what = f"{path.name} is a vision-language model ({config.get('model_type')})"
    if frozen():
        raise VisionUnavailable(
            f"{what}; the mlxd binary does not carry vision support. Serve it from a Python "
            f"install with the vision extra: {VISION_INSTALL}, then `mlxd {path}`"
        )
    try:
        import mlx_vlm  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as exc:
        raise VisionUnavailable(
            f"{what}; serving it needs mlx-vlm ({exc}). Install the vision extra: {VISION_INSTALL}"
        ) from None


def load_vlm(path: Path, config: dict):
    """(text model for the engine, mlx-lm tokenizer, config, Vision). Raises ValueError with
    the reason when the family cannot be served this way."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_lm.utils import _get_classes
    from mlx_vlm.utils import load as load_vlm_dir

    text_config = dict(config.get("text_config") or {})
    if _uses_mrope(config) or _uses_mrope(text_config):
        raise ValueError(
            "it places image tokens with multimodal rotary positions (M-RoPE, as Qwen2-VL "
            "does), which mlxd's batch does not decode yet"
        )
    vlm, processor = load_vlm_dir(str(path))
    text_config.setdefault("vocab_size", config.get("vocab_size"))
    try:
        model_class, args_class = _get_classes(text_config)
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"its language model ({text_config.get('model_type')}) is not one mlx-lm decodes: {exc}"
        ) from None
    text = model_class(args_class.from_dict(text_config))
    lm = vlm.language_model
    quantized = {
        p: m
        for p, m in lm.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    }
    if quantized:
        sample = next(iter(quantized.values()))
        nn.quantize(
            text,
            group_size=sample.group_size,
            bits=sample.bits,
            mode=getattr(sample, "mode", "affine"),
            class_predicate=lambda p, _m: p in quantized,
        )
    try:  # the same arrays: no copy of the language model's weights
        text.load_weights(list(tree_flatten(lm.parameters())), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"its language model's weights do not fit mlx-lm's {text_config.get('model_type')}: {exc}"
        ) from None
    text.eval()
    mx.eval(text.parameters())
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    token = _image_token_id(vlm, processor, config)
    vision = Vision(vlm, processor, str(config.get("model_type")), token, _image_side(processor))
    return text, tokenizer, {**text_config, **config}, vision


def _uses_mrope(config: dict) -> bool:
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    return isinstance(rope, dict) and ("mrope_section" in rope or rope.get("type") == "mrope")


def _image_token_id(vlm, processor, config: dict) -> int:
    for value in (
        getattr(processor, "image_token_id", None),
        config.get("image_token_index"),
        config.get("image_token_id"),
        getattr(getattr(vlm, "config", None), "image_token_index", None),
    ):
        if isinstance(value, int):
            return value
    raise ValueError("its configuration names no image token")


def _image_side(processor) -> int:
    """The largest side the image processor works at (crop, resize or longest edge)."""
    ip = getattr(processor, "image_processor", None)
    sides = []
    for name in ("crop_size", "size"):
        value = getattr(ip, name, None)
        if isinstance(value, int):
            sides.append(value)
            continue
        # a dict, or transformers' SizeDict (attributes, some None)
        items = value.items() if isinstance(value, dict) else vars(value).items() if value else ()
        for key, v in items:
            if isinstance(v, int) and key in SIDE_KEYS:
                sides.append(v)
            elif isinstance(v, int) and key == "max_pixels":
                sides.append(int(v**0.5))
    max_pixels = getattr(ip, "max_pixels", None)
    if isinstance(max_pixels, int) and max_pixels > 0:
        sides.append(int(max_pixels**0.5))
    return max(sides, default=DEFAULT_IMAGE_SIDE)
