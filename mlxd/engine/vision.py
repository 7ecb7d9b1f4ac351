"""Images inside the continuous batch: the image side of a job and its prefill.

A vision job's prompt holds one image token per image embedding (the processor expanded them).
At insert, the generation thread runs the prompt (all but its last token) through the language
model with mlx-vlm's merged text + image embeddings, into a fresh KV cache or after a cached
prefix; the sequence then joins the batch like a prompt-cache hit, and decodes as text. So image
and text requests decode together, and a follow-up about the same image reuses the prefill: the
prompt cache sees each image token as a negative id drawn from the images' hash and the token's
place (``cache_key``), so only the same image bytes match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import make_prompt_cache

KEY_SPACE = 2**62  # negative key ids never meet a real token id (those are >= 0)


@dataclass(frozen=True)
class VisionInput:
    """The image side of one job's prompt (made off the generation thread, as numpy arrays:
    MLX arrays belong on the thread that evaluates them)."""

    arrays: dict[str, np.ndarray] = field(hash=False)  # pixel_values and its companions
    digest: bytes  # sha256 over the images' bytes, in order
    image_token_id: int
    images: int
    image_tokens: int  # image tokens in the prompt (counted in usage.prompt_tokens)

    @classmethod
    def of(cls, arrays: dict, images: list[bytes], image_token_id: int, prompt: list[int]):
        digest = hashlib.sha256()
        for data in images:
            digest.update(hashlib.sha256(data).digest())
        return cls(
            arrays,
            digest.digest(),
            image_token_id,
            len(images),
            sum(1 for t in prompt if t == image_token_id),
        )


def cache_key(prompt: list[int], vision: VisionInput | None) -> list[int]:
    """The prompt as the prompt cache keys it: image tokens become ids of the images' hash."""
    if vision is None:
        return prompt
    base = int.from_bytes(vision.digest[:8], "big")
    token = vision.image_token_id
    return [-1 - (base + i) % KEY_SPACE if t == token else t for i, t in enumerate(prompt)]


def cache_tokens(prompt: list[int], vision: VisionInput | None, tokens: list[int]) -> list[int]:
    """A finished sequence's tokens (prompt + generated) as the prompt cache keys them."""
    if vision is None:
        return tokens
    return cache_key(prompt, vision) + list(tokens[len(prompt) :])


def needs_prefill(prompt: list[int], vision: VisionInput, cached: int) -> bool:
    """Whether an image token lies past the cached prefix (so the image must be embedded)."""
    return vision.image_token_id in prompt[cached:-1]


def prefill(vlm, model, prompt: list[int], vision: VisionInput, cache, cached: int, step: int):
    """Feed ``prompt[cached:-1]`` into ``cache`` (a fresh one when None) with the images merged
    into the embeddings, ``step`` tokens per forward pass; the last token is left to the batch,
    which samples from it. Generation thread only."""
    ids = mx.array(prompt)[None]
    arrays = {k: mx.array(v) for k, v in vision.arrays.items()}
    out = vlm.get_input_embeddings(ids, **arrays)
    embeddings = getattr(out, "inputs_embeds", out)
    cache = cache if cache is not None else make_prompt_cache(model)
    end = len(prompt) - 1
    for start in range(cached, end, step):
        stop = min(start + step, end)
        model(ids[:, start:stop], cache=cache, input_embeddings=embeddings[:, start:stop])
        mx.eval([c.state for c in cache])
    return cache
