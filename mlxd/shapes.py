"""Engine results -> OpenAI response objects, for chat and text completions.

One ``Shape`` per response: it knows the id, model and creation time and builds every chunk of a
stream or the whole non-streamed object, so the handlers never assemble JSON by hand.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


@dataclass
class Shape:
    model: str
    include_usage: bool = False   # streamed: every chunk says "usage": null, a last one has it
    created: int = field(default_factory=lambda: int(time.time()))

    def _envelope(self, obj_type: str, choices: list, **extra) -> dict:
        body = {"id": self.id, "object": obj_type, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}
        body.update(extra)
        if self.include_usage and "usage" not in body:
            body["usage"] = None
        return body


@dataclass
class ChatShape(Shape):
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex)

    def _chunk(self, delta: dict, finish_reason: str | None = None) -> dict:
        return self._envelope("chat.completion.chunk", [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])

    def first_chunk(self) -> dict:
        return self._chunk({"role": "assistant", "content": ""})

    def delta_chunk(self, text: str) -> dict:
        return self._chunk({"content": text})

    def final_chunk(self, reason: str) -> dict:
        return self._chunk({}, reason)

    def usage_chunk(self, use: dict) -> dict:
        return self._envelope("chat.completion.chunk", [], usage=use)

    def whole(self, text: str, reason: str, use: dict) -> dict:
        message = {"role": "assistant", "content": text, "refusal": None}
        return self._envelope("chat.completion", [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
            usage=use)


@dataclass
class TextShape(Shape):
    id: str = field(default_factory=lambda: "cmpl-" + uuid.uuid4().hex)

    def _chunk(self, text: str, finish_reason: str | None = None) -> dict:
        return self._envelope("text_completion", [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}])

    def first_chunk(self) -> dict | None:
        return None   # text completions have no role chunk

    def delta_chunk(self, text: str) -> dict:
        return self._chunk(text)

    def final_chunk(self, reason: str) -> dict:
        return self._chunk("", reason)

    def usage_chunk(self, use: dict) -> dict:
        return self._envelope("text_completion", [], usage=use)

    def whole(self, text: str, reason: str, use: dict) -> dict:
        return self._envelope("text_completion", [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}], usage=use)
