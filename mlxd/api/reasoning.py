"""Thinking models: where their reasoning starts and ends, and whether a prompt leaves it open.

A model whose vocabulary has thinking markers (``<think>``/``</think>`` and the other pairs that
mlx-lm's ``tokenizer_utils._infer_thinking`` knows) gets its thinking split out of ``content``
into ``reasoning_content`` (DeepSeek's field name, which vLLM and llama.cpp also use), unless the
request or the server says ``reasoning_format: "none"``. Some templates open the block in the
generation prompt (DeepSeek-R1, Qwen3 thinking): then the reply starts inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The formats (llama.cpp's names) are a setting: mlxd/service/config.py REASONING_FORMATS.
GENERATION_PROMPT_TOKENS = 32  # templates append at most a few tokens after the last message


@dataclass(frozen=True)
class ThinkMarkers:
    start: str
    end: str


def think_markers(tokenizer) -> ThinkMarkers | None:
    """The model's thinking markers as mlx-lm inferred them, or None for a model that has none."""
    if not getattr(tokenizer, "has_thinking", False):
        return None
    return ThinkMarkers(tokenizer.think_start, tokenizer.think_end)


def splits(reasoning_format: str, markers: ThinkMarkers | None) -> bool:
    return markers is not None and reasoning_format != "none"


def opens_thinking(tokenizer, prompt: list[int]) -> bool:
    """True when the generation prompt (the prompt's tail) opens a thinking block that it does
    not close: the reply then starts inside it."""
    tail = max(len(prompt) - GENERATION_PROMPT_TOKENS, 0)
    start = tokenizer.rfind_think_start(prompt, start=tail)
    return start >= 0 and start > tokenizer.rfind_think_end(prompt, start=tail)
