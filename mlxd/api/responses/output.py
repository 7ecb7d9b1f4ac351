"""A reply's deltas -> Responses output items, and the semantic stream events that build them.

``Output`` is fed the same deltas chat sends (``content``, ``reasoning_content``, ``tool_calls``:
mlxd/api/reply.py) and keeps the items in order: a ``reasoning`` item for thinking, a
``message`` item with one ``output_text`` part for answer text, a ``function_call`` item per
call. Each step also comes back as the events OpenAI streams for it, without sequence numbers
(the stream numbers them); a non-streamed response keeps only the items. ``Envelope`` is the
response object around them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from mlxd.api.responses.items import encode_reasoning, new_id
from mlxd.api.responses.request import ResponsesRequest

MESSAGE, REASONING = "message", "reasoning"
# Per item type: its id prefix, its one content part, and the names of its text events.
PARTS = {
    MESSAGE: ("msg", {"type": "output_text", "text": "", "annotations": [], "logprobs": []}),
    REASONING: ("rs", {"type": "reasoning_text", "text": ""}),
}
TEXT_EVENTS = {MESSAGE: "response.output_text", REASONING: "response.reasoning_text"}


class Output:
    def __init__(self, include_reasoning: bool = False) -> None:
        self.items: list[dict] = []
        self._open: dict | None = None  # the message or reasoning item that text goes into
        self._include_reasoning = include_reasoning

    def feed(self, deltas: list[dict]) -> list[dict]:
        events: list[dict] = []
        for delta in deltas:
            if "content" in delta:
                events += self._text(MESSAGE, delta["content"])
            elif "reasoning_content" in delta:
                events += self._text(REASONING, delta["reasoning_content"])
            for call in delta.get("tool_calls", ()):
                events += self._call(call)
        return events

    def finish(self, incomplete: bool) -> list[dict]:
        """Close the open item: ``incomplete`` when generation ran out of tokens in it."""
        return self._close("incomplete" if incomplete else "completed")

    @property
    def reasoning(self) -> str:
        return "".join(i["content"][0]["text"] for i in self.items if i["type"] == REASONING)

    # ----- internals -----

    def _event(self, kind: str, item: dict, **fields) -> dict:
        return {
            "type": kind,
            "item_id": item["id"],
            "output_index": self.items.index(item),
            **fields,
        }

    def _text(self, item_type: str, text: str) -> list[dict]:
        events: list[dict] = []
        if self._open is None or self._open["type"] != item_type:
            events += self._close("completed") + self._start(item_type)
        item = self._open
        assert item is not None
        item["content"][0]["text"] += text
        extra: dict[str, list] = {"logprobs": []} if item_type == MESSAGE else {}
        events.append(
            self._event(
                TEXT_EVENTS[item_type] + ".delta", item, content_index=0, delta=text, **extra
            )
        )
        return events

    def _start(self, item_type: str) -> list[dict]:
        prefix, part = PARTS[item_type]
        item: dict = {"id": new_id(prefix), "type": item_type, "status": "in_progress"}
        if item_type == MESSAGE:
            item["role"] = "assistant"
        else:
            item["summary"] = []
        item["content"] = []
        self.items.append(item)
        events = [self._added(item)]
        item["content"].append(copy.deepcopy(part))
        events.append(
            self._event(
                "response.content_part.added", item, content_index=0, part=copy.deepcopy(part)
            )
        )
        self._open = item
        return events

    def _close(self, status: str) -> list[dict]:
        item, self._open = self._open, None
        if item is None:
            return []
        item["status"] = status
        part = item["content"][0]
        if item["type"] == REASONING and self._include_reasoning:
            item["encrypted_content"] = encode_reasoning(part["text"])
        extra: dict[str, list] = {"logprobs": []} if item["type"] == MESSAGE else {}
        return [
            self._event(
                TEXT_EVENTS[item["type"]] + ".done",
                item,
                content_index=0,
                text=part["text"],
                **extra,
            ),
            self._event(
                "response.content_part.done", item, content_index=0, part=copy.deepcopy(part)
            ),
            self._done(item),
        ]

    def _call(self, call: dict) -> list[dict]:
        events = self._close("completed")
        function = call["function"]
        item = {
            "id": new_id("fc"),
            "type": "function_call",
            "status": "in_progress",
            "call_id": call["id"],
            "name": function["name"],
            "arguments": "",
        }
        self.items.append(item)
        events.append(self._added(item))
        arguments = function["arguments"]
        item |= {"arguments": arguments, "status": "completed"}
        return events + [
            self._event("response.function_call_arguments.delta", item, delta=arguments),
            self._event(
                "response.function_call_arguments.done",
                item,
                arguments=arguments,
                name=function["name"],
            ),
            self._done(item),
        ]

    def _added(self, item: dict) -> dict:
        index = self.items.index(item)
        return {
            "type": "response.output_item.added",
            "output_index": index,
            "item": copy.deepcopy(item),
        }

    def _done(self, item: dict) -> dict:
        index = self.items.index(item)
        return {
            "type": "response.output_item.done",
            "output_index": index,
            "item": copy.deepcopy(item),
        }


def usage(prompt_tokens: int, output_tokens: int, cached: int, reasoning_tokens: int) -> dict:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": prompt_tokens + output_tokens,
    }


@dataclass
class Envelope:
    """The response object around the output: what the request asked, as OpenAI echoes it."""

    req: ResponsesRequest
    model: str
    temperature: float
    top_p: float
    max_output_tokens: int | None
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def body(
        self,
        status: str,
        output: list[dict],
        use: dict | None = None,
        error: dict | None = None,
        incomplete: str | None = None,
    ) -> dict:
        req = self.req
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": req.instructions,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None,
            "model": self.model,
            "output": copy.deepcopy(output),
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "reasoning": req.reasoning.to_json(),
            "service_tier": "default",
            "store": req.store,
            "temperature": self.temperature,
            "text": req.text,
            "tool_choice": req.tool_choice_echo,
            "tools": [responses_tool(t) for t in req.tools],
            "top_logprobs": 0,
            "top_p": self.top_p,
            "truncation": "disabled",
            "usage": use,
            "metadata": req.metadata,
            "background": False,
            **req.echoed,
        }


def responses_tool(tool: dict) -> dict:
    """A tool in chat's shape back in the Responses API's (flat) shape."""
    function = tool["function"]
    return {
        "type": "function",
        "name": function["name"],
        "description": function.get("description"),
        "parameters": function.get("parameters"),
        "strict": bool(function.get("strict")),
    }
