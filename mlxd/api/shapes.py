"""Engine results -> OpenAI response objects, for chat and text completions.

One ``Shape`` per response: it knows the id, model and creation time and builds every chunk of a
stream or the whole non-streamed object, so the handlers never assemble JSON by hand.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


@dataclass
class Choice:
    """One finished choice of a non-streamed response. ``message`` holds the reply's fields:
    ``content`` and, for chat, ``reasoning_content`` and ``tool_calls`` where they apply."""

    message: dict
    reason: str
    logprobs: dict | None = None


@dataclass
class Shape(ABC):
    model: str
    include_usage: bool = False  # streamed: every chunk says "usage": null, a last one has it
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = ""  # set by each kind: chatcmpl-..., cmpl-...
    chunk_type = ""  # the "object" of a streamed chunk

    @abstractmethod
    def first_chunk(self, index: int) -> dict | None: ...

    @abstractmethod
    def delta_chunk(self, index: int, delta: dict, logprobs: dict | None = None) -> dict: ...

    @abstractmethod
    def final_chunk(self, index: int, reason: str) -> dict: ...

    @abstractmethod
    def whole(self, choices: list[Choice], use: dict) -> dict: ...

    def usage_chunk(self, use: dict) -> dict:
        """The last streamed chunk (stream_options.include_usage): no choices, the usage."""
        return self._envelope(self.chunk_type, [], usage=use)

    def _envelope(self, obj_type: str, choices: list, **extra) -> dict:
        body = {
            "id": self.id,
            "object": obj_type,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        body.update(extra)
        if self.include_usage and "usage" not in body:
            body["usage"] = None
        return body


@dataclass
class ChatShape(Shape):
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex)
    chunk_type = "chat.completion.chunk"

    def _chunk(self, index: int, delta: dict, reason: str | None = None, logprobs=None) -> dict:
        return self._envelope(
            self.chunk_type,
            [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}],
        )

    def first_chunk(self, index: int) -> dict | None:
        return self._chunk(index, {"role": "assistant", "content": ""})

    def delta_chunk(self, index: int, delta: dict, logprobs: dict | None = None) -> dict:
        """``delta``: ``{"content"}``, ``{"reasoning_content"}`` or ``{"tool_calls"}``."""
        return self._chunk(index, delta, logprobs=logprobs)

    def final_chunk(self, index: int, reason: str) -> dict:
        return self._chunk(index, {}, reason)

    def whole(self, choices: list[Choice], use: dict) -> dict:
        return self._envelope(
            "chat.completion",
            [
                {
                    "index": i,
                    "message": {"role": "assistant", **c.message, "refusal": None},
                    "logprobs": c.logprobs,
                    "finish_reason": c.reason,
                }
                for i, c in enumerate(choices)
            ],
            usage=use,
        )


@dataclass
class TextShape(Shape):
    id: str = field(default_factory=lambda: "cmpl-" + uuid.uuid4().hex)
    chunk_type = "text_completion"

    def _chunk(self, index: int, text: str, reason: str | None = None, logprobs=None) -> dict:
        return self._envelope(
            self.chunk_type,
            [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}],
        )

    def first_chunk(self, index: int) -> dict | None:
        return None  # text completions have no role chunk

    def delta_chunk(self, index: int, delta: dict, logprobs: dict | None = None) -> dict:
        return self._chunk(index, delta.get("content", ""), logprobs=logprobs)

    def final_chunk(self, index: int, reason: str) -> dict:
        return self._chunk(index, "", reason)

    def whole(self, choices: list[Choice], use: dict) -> dict:
        return self._envelope(
            "text_completion",
            [
                {
                    "index": i,
                    "text": c.message["content"],
                    "logprobs": c.logprobs,
                    "finish_reason": c.reason,
                }
                for i, c in enumerate(choices)
            ],
            usage=use,
        )
