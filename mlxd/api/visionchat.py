"""A chat prompt for a vision-language model: its images fetched and decoded within the limits,
its messages rendered by the model's template, then its processor (which expands each image into
its image tokens and makes the pixel arrays). Runs off the event loop (``asyncio.to_thread``).

VLM templates read ``content`` as a list of parts, as Hugging Face's processors hand it to them,
so every message's content becomes one here (a string -> one text part).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from mlxd.api import images
from mlxd.api.images import ImageLimits, ImageRef
from mlxd.engine.vision import VisionInput
from mlxd.transport.errors import bad_request

log = logging.getLogger(__name__)

SKIP_ARRAYS = ("input_ids", "attention_mask")  # the prompt is the job's; the rest feeds the VLM


def refuse_without_vision(refs: list[ImageRef], model: str) -> None:
    """A text-only model given an image part: a 400 naming the part."""
    if refs:
        raise bad_request(
            f"'{refs[0].where}' is an image, but the model {model} has no vision "
            "(it is a text-only model)",
            refs[0].where,
            "model_has_no_vision",
        )


def template_messages(messages: tuple[dict, ...]) -> list[dict]:
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            parts = [{"type": "text", "text": content}]
        else:
            parts = [
                {"type": p["type"], "text": p["text"]} if p["type"] == "text" else {"type": "image"}
                for p in content
            ]
        out.append({**m, "content": parts})
    return out


def prepare(
    vision,
    tokenizer,
    messages: tuple[dict, ...],
    tools: list | None,
    refs: list[ImageRef],
    limits: ImageLimits,
    extra: dict | None = None,
) -> tuple[list[int], VisionInput | None]:
    """(prompt token ids, the job's VisionInput or None when no image is given); ``extra``:
    more template variables."""
    images.check_count(refs, limits)
    start = time.perf_counter()
    pictures = [images.load(ref, limits, vision.image_side) for ref in refs]
    text = _render(tokenizer, template_messages(messages), tools, extra)
    try:
        out = vision.processor(text=[text], images=[p.image for p in pictures] or None)
    except Exception as exc:  # the processor's own complaint about these inputs
        raise bad_request(
            f"the model's processor refused these messages: {exc}", "messages"
        ) from None
    prompt = np.asarray(out["input_ids"]).reshape(-1).tolist()
    if not refs:
        return prompt, None
    if vision.image_token_id not in prompt:
        raise bad_request("the model's chat template placed no image in the prompt", refs[0].where)
    arrays = {k: np.asarray(v) for k, v in out.items() if k not in SKIP_ARRAYS and v is not None}
    vin = VisionInput.of(arrays, [p.data for p in pictures], vision.image_token_id, prompt)
    log.debug(
        "%d image(s) -> %d image tokens, preprocessed in %.1f ms",
        vin.images,
        vin.image_tokens,
        (time.perf_counter() - start) * 1000,
    )
    return prompt, vin


def _render(tokenizer, messages: list[dict], tools: list | None, extra: dict | None) -> str:
    if not getattr(tokenizer, "has_chat_template", False):
        raise bad_request("this model has no chat template; use /v1/completions", "messages")
    variables = {
        "add_generation_prompt": True,  # unless ``extra`` turns it off (a prefill)
        **({"tools": tools} if tools else {}),
        **(extra or {}),
        "tokenize": False,
    }
    try:
        return tokenizer.apply_chat_template(messages, **variables)
    except Exception as exc:  # the template's own raise_exception(), or a jinja error
        raise bad_request(
            f"the model's chat template rejected these messages: {exc}", "messages"
        ) from None
