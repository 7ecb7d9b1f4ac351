"""One Anthropic reply in the making: the chat ``Reply``'s deltas (the same reading of thinking and
tool calls that chat uses) -> content blocks, as stream events while they grow and as the whole
message at the end.

Blocks open and close in the order the model wrote them: a run of thinking is a ``thinking``
block, a run of answer text a ``text`` block, each tool call a ``tool_use`` block whose input
arrives as one ``input_json_delta`` (the call is parsed whole before it is sent, as chat sends
it). Each stream event is ``(name, data)``; the data carries the same ``type``.
"""

from __future__ import annotations

import json
import uuid

from mlxd.api.reply import Reply
from mlxd.engine.events import Finished

Event = tuple[str, dict]

# The chat reply's finish reason -> Anthropic's stop_reason (a stop sequence is told apart).
STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use"}
# Each block type, the field its text grows in, and the delta that grows it.
TEXT_BLOCKS = {
    "content": ("text", "text", "text_delta"),
    "reasoning_content": ("thinking", "thinking", "thinking_delta"),
}
ID_HEX_CHARS = 24  # Anthropic's ids are a prefix and 24 characters


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """Anthropic counts the prompt in parts: ``input_tokens`` is what was not read from the
    cache, so that the three input counts add up to the prompt."""
    return {
        "input_tokens": prompt_tokens - cached_tokens,
        "output_tokens": completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached_tokens,
    }


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:ID_HEX_CHARS]


class MessageBuilder:
    def __init__(
        self,
        model: str,
        reply: Reply,
        prompt_tokens: int,
        stop_sequences: tuple[str, ...] = (),
        show_thinking: bool = True,
        length_reason: str = "max_tokens",
    ) -> None:
        self.id = new_id("msg_")
        self.model = model
        self.reply = reply
        self.stop_sequences = stop_sequences
        self.show_thinking = show_thinking  # thinking.display "omitted": blocks without text
        # Running out of max_tokens, or out of context when max_tokens was cut to fit it.
        self.length_reason = length_reason
        self.content: list[dict] = []
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        # The cached part of the prompt is known at the end; message_delta then corrects it.
        self.usage = usage(prompt_tokens, 0)
        self._open: str | None = None  # the delta key of the block still open (the last one)

    # ----- the stream -----

    def start(self) -> Event:
        return "message_start", {"type": "message_start", "message": self._envelope([])}

    def feed(self, text: str) -> list[Event]:
        return self._blocks(self.reply.feed(text))

    def finish(self, done: Finished) -> list[Event]:
        deltas, reason = self.reply.finish(done.reason)
        events = self._blocks(deltas) + self._close()
        if done.stop is not None and done.stop in self.stop_sequences:
            self.stop_reason, self.stop_sequence = "stop_sequence", done.stop
        elif reason == "length":
            self.stop_reason = self.length_reason
        else:
            self.stop_reason = STOP_REASONS.get(reason, "end_turn")
        self.usage = usage(done.prompt_tokens, done.completion_tokens, done.cached_tokens)
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence}
        return events + [
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": self.usage}),
            ("message_stop", {"type": "message_stop"}),
        ]

    # ----- the whole message -----

    def whole(self) -> dict:
        return self._envelope(self.content)

    # ----- internals -----

    def _envelope(self, content: list[dict]) -> dict:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": dict(self.usage),
        }

    def _blocks(self, deltas: list[dict]) -> list[Event]:
        events: list[Event] = []
        for delta in deltas:
            for key, value in delta.items():
                if key == "tool_calls":
                    for call in value:
                        events += self._tool_use(call["function"])
                else:
                    events += self._text(key, value)
        return events

    def _text(self, key: str, text: str) -> list[Event]:
        block_type, field, delta_type = TEXT_BLOCKS[key]
        events = []
        if self._open != key:
            events = self._close()
            block = {"type": block_type, field: ""}
            if block_type == "thinking":
                block["signature"] = ""  # nothing signs a local model's thinking
            events.append(self._start(block))
            self._open = key
        if block_type == "thinking" and not self.show_thinking:
            return events
        self.content[-1][field] += text
        delta = {"type": delta_type, field: text}
        events.append(self._delta(delta))
        return events

    def _tool_use(self, function: dict) -> list[Event]:
        arguments = function["arguments"]
        events = self._close()
        block = {
            "type": "tool_use",
            "id": new_id("toolu_"),
            "name": function["name"],
            "input": json.loads(arguments),
        }
        events.append(self._start({**block, "input": {}}, block))
        events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        events.append(self._stop())
        return events

    def _start(self, shown: dict, kept: dict | None = None) -> Event:
        self.content.append(kept or dict(shown))
        data = {"type": "content_block_start", "index": len(self.content) - 1}
        return "content_block_start", {**data, "content_block": shown}

    def _delta(self, delta: dict) -> Event:
        data = {"type": "content_block_delta", "index": len(self.content) - 1, "delta": delta}
        return "content_block_delta", data

    def _stop(self) -> Event:
        return "content_block_stop", {"type": "content_block_stop", "index": len(self.content) - 1}

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [self._stop()]
