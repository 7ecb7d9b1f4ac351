"""Anthropic Messages bodies -> one frozen record, parsed once: a ``ChatRequest`` (the record the
chat path runs on) plus what only Anthropic asks (stop sequences named back, thinking display,
prefill).

Every field Anthropic defines is honoured or refused with a 400 naming it; a field it does not
define is refused as chat refuses one. Two are accepted that change nothing here, and say so in
README: ``output_config.effort`` (a local model has one effort) and ``cache_control`` (the prompt
cache keeps every prefix unasked). ``metadata.user_id`` and ``service_tier`` change no output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from mlxd.api.anthropic_messages.blocks import conversation
from mlxd.api.anthropic_messages.body import (
    COUNT_TOKENS_BODY,
    EFFORTS,
    MAX_STOP_SEQUENCES,
    MAX_TOOLS,
    MESSAGES_BODY,
    MIN_THINKING_BUDGET,
    SERVICE_TIERS,
)
from mlxd.api.fields import MAX_STOP_CHARS, Fields, Sampling, parse_object
from mlxd.api.fieldtable import Body
from mlxd.api.messages import ToolChoice, kind, refuse_unknown, tool_list
from mlxd.api.schema import ChatRequest, ResponseFormat, compile_grammar
from mlxd.transport.errors import bad_request

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")  # Anthropic's rule for tool names
DEFAULT_THINKING_TURNS = 1  # Anthropic keeps the latest turn's thinking unless told otherwise


@dataclass(frozen=True)
class Thinking:
    on: bool | None = None  # True: thinking blocks out; False: the template is told not to
    #                         think; None: the server's --reasoning-format decides
    shown: bool = True  # display "omitted": thinking blocks come back without their text


@dataclass(frozen=True)
class MessagesRequest:
    chat: ChatRequest  # messages, tools, sampling... as the chat path reads them
    stop_sequences: tuple[str, ...]  # the client's own (the chat plan may add more)
    thinking: Thinking
    prefill: bool  # the last message is the assistant's: the reply continues it

    @property
    def stream(self) -> bool:
        return self.chat.stream

    BODY: ClassVar[Body] = MESSAGES_BODY

    @property
    def template_variables(self) -> dict:
        """What the chat template is told besides messages and tools."""
        variables: dict = {}
        if self.thinking.on is False:  # read by Qwen 3 and other templates that think
            variables["enable_thinking"] = False
        if self.prefill:
            variables.update(add_generation_prompt=False, continue_final_message=True)
        return variables

    @classmethod
    def from_json(cls, body: bytes) -> MessagesRequest:
        obj = parse_object(body)
        count_only = cls.BODY is COUNT_TOKENS_BODY
        fields = Fields(obj, cls.BODY, {})  # names, required ones, JSON types: the table
        _service_tier(obj)
        _metadata(obj)
        _cache_control(obj.get("cache_control"), "cache_control")
        tools = _tools(obj)
        choice, parallel = _tool_choice(obj, tools)
        thinking = _thinking(obj)
        convo = conversation(obj, _thinking_turns(obj))
        stops = _stop_sequences(obj)
        chat = ChatRequest(
            model=fields.model(),
            messages=convo.messages,
            sampling=Sampling(
                max_tokens=None if count_only else fields.integer("max_tokens", 1, 2**31 - 1),
                temperature=fields.number("temperature", 0.0, 1.0),
                top_p=fields.number("top_p", 0.0, 1.0, low_open=True),
                stop=stops,
                seed=None,
                top_k=fields.integer("top_k", 0, 2**31 - 1) or 0,
            ),
            stream=fields.stream(),
            include_usage=False,
            response_format=_output_config(obj),
            tools=tools,
            tool_choice=choice,
            parallel_tool_calls=parallel,
            reasoning_format="deepseek" if thinking.on else None,
        )
        return cls(chat, stops, thinking, convo.prefill)


class CountTokensRequest(MessagesRequest):
    """POST /v1/messages/count_tokens: the fields that shape the prompt, nothing else."""

    BODY: ClassVar[Body] = COUNT_TOKENS_BODY


def _object(obj: dict, key: str, allowed: tuple[str, ...]) -> dict | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(f"'{key}' must be an object, not {kind(value)}", key)
    refuse_unknown(value, allowed, key, key)
    return value


def _service_tier(obj: dict) -> None:
    value = obj.get("service_tier")
    if value is not None and value not in SERVICE_TIERS:
        raise bad_request(
            f"'service_tier' must be one of {', '.join(SERVICE_TIERS)}, got {value!r}",
            "service_tier",
        )


def _metadata(obj: dict) -> None:
    value = _object(obj, "metadata", ("user_id",))
    if value and value.get("user_id") is not None and not isinstance(value["user_id"], str):
        raise bad_request("'metadata.user_id' must be a string", "metadata.user_id")


def _cache_control(value: Any, where: str) -> None:
    if value is not None and (
        not isinstance(value, dict)
        or value.get("type") != "ephemeral"
        or set(value) - {"type", "ttl"}
    ):
        raise bad_request(f'\'{where}\' must be {{"type": "ephemeral", "ttl"?: ...}}', where)


def _stop_sequences(obj: dict) -> tuple[str, ...]:
    value = obj.get("stop_sequences")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad_request("'stop_sequences' must be an array of strings", "stop_sequences")
    if len(value) > MAX_STOP_SEQUENCES:
        raise bad_request(
            f"'stop_sequences' takes at most {MAX_STOP_SEQUENCES} sequences", "stop_sequences"
        )
    if any(not s or len(s) > MAX_STOP_CHARS for s in value):
        raise bad_request(
            f"each stop sequence must hold 1 to {MAX_STOP_CHARS} characters", "stop_sequences"
        )
    return tuple(value)


# ----- tools and tool_choice -----


def _tools(obj: dict) -> tuple[dict, ...]:
    return tool_list(obj, _tool, MAX_TOOLS, "tool definitions", "name")


def _tool(tool: Any, where: str) -> dict:
    """One custom tool, as the chat path's function tool."""
    if not isinstance(tool, dict):
        raise bad_request(f"'{where}' must be an object", where)
    if tool.get("type") not in (None, "custom"):
        raise bad_request(
            f"'{where}.type': {tool['type']!r} is one of Anthropic's server tools, which run on "
            "Anthropic's side; mlxd takes custom tools (name, description, input_schema)",
            f"{where}.type",
        )
    refuse_unknown(
        tool,
        ("type", "name", "description", "input_schema", "cache_control", "strict"),
        "tool",
        where,
    )
    _cache_control(tool.get("cache_control"), f"{where}.cache_control")
    name = tool.get("name")
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise bad_request("a tool name must be 1 to 128 of a-z, A-Z, 0-9, _ and -", f"{where}.name")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise bad_request(
            f"'{where}.input_schema' must be a JSON schema object with type 'object'",
            f"{where}.input_schema",
        )
    out: dict = {"name": name, "parameters": schema}
    for key, wanted, what in (("description", str, "a string"), ("strict", bool, "a boolean")):
        if tool.get(key) is None:
            continue
        if not isinstance(tool[key], wanted):
            raise bad_request(f"'{where}.{key}' must be {what}", f"{where}.{key}")
        out[key] = tool[key]
    return out


# Anthropic's tool_choice type -> (chat's mode, the keys it may carry besides "type").
TOOL_CHOICES = {
    "auto": ("auto", ("disable_parallel_tool_use",)),
    "any": ("required", ("disable_parallel_tool_use",)),
    "tool": ("function", ("name", "disable_parallel_tool_use")),
    "none": ("none", ()),
}


def _tool_choice(obj: dict, tools: tuple[dict, ...]) -> tuple[ToolChoice, bool]:
    """Chat's tool choice, and whether calls may come several at once (parallel_tool_calls)."""
    value = obj.get("tool_choice")
    if value is None:
        return ToolChoice("auto" if tools else "none"), True
    if not isinstance(value, dict) or value.get("type") not in TOOL_CHOICES:
        raise bad_request(
            "'tool_choice' must be an object whose 'type' is auto, any, tool or none",
            "tool_choice",
        )
    mode, keys = TOOL_CHOICES[value["type"]]
    refuse_unknown(value, ("type", *keys), "tool_choice", "tool_choice")
    disable = value.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise bad_request(
            "'tool_choice.disable_parallel_tool_use' must be a boolean",
            "tool_choice.disable_parallel_tool_use",
        )
    if mode in ("required", "function") and not tools:
        raise bad_request(f"tool_choice {value['type']!r} needs 'tools'", "tool_choice")
    name = value.get("name")
    if mode == "function" and name not in {t["function"]["name"] for t in tools}:
        raise bad_request(
            f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice.name"
        )
    if mode == "auto" and not tools:
        mode = "none"
    return ToolChoice(mode, name if mode == "function" else None), not disable


# ----- thinking, output_config, context_management -----


def _thinking(obj: dict) -> Thinking:
    value = obj.get("thinking")
    if value is None:
        return Thinking()
    keys = {"enabled": ("budget_tokens", "display"), "adaptive": ("display",), "disabled": ()}
    if not isinstance(value, dict) or value.get("type") not in keys:
        raise bad_request(
            "'thinking' must be an object whose 'type' is enabled, adaptive or disabled",
            "thinking.type",
        )
    refuse_unknown(value, ("type", *keys[value["type"]]), "thinking", "thinking")
    if value["type"] == "disabled":
        return Thinking(on=False)
    if value["type"] == "enabled":
        budget = value.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
            raise bad_request(
                f"'thinking.budget_tokens' must be an integer of at least {MIN_THINKING_BUDGET}",
                "thinking.budget_tokens",
            )
    display = value.get("display")
    if display not in (None, "summarized", "omitted"):
        raise bad_request(
            "'thinking.display' must be 'summarized' or 'omitted'", "thinking.display"
        )
    return Thinking(on=True, shown=display != "omitted")


def _output_config(obj: dict) -> ResponseFormat | None:
    """``format`` is enforced as chat's json_schema response_format is; ``effort`` changes
    nothing (validated, then left: there is one effort here)."""
    value = _object(obj, "output_config", ("effort", "format"))
    if value is None:
        return None
    if value.get("effort") not in (None, *EFFORTS):
        raise bad_request(
            f"'output_config.effort' must be one of {', '.join(EFFORTS)}", "output_config.effort"
        )
    fmt = value.get("format")
    if fmt is None:
        return None
    if (
        not isinstance(fmt, dict)
        or fmt.get("type") != "json_schema"
        or set(fmt) != {"type", "schema"}
        or not isinstance(fmt["schema"], dict)
    ):
        raise bad_request(
            '\'output_config.format\' must be {"type": "json_schema", "schema": {...}}',
            "output_config.format",
        )
    schema = fmt["schema"]
    grammar = compile_grammar(schema, "output_config.format.schema")
    return ResponseFormat("json_schema", schema, "output", grammar)


def _thinking_turns(obj: dict) -> int | None:
    """How many of the latest turns keep their thinking (None: all): Anthropic's
    ``clear_thinking_20251015`` context edit. The other edits are refused."""
    value = _object(obj, "context_management", ("edits",))
    edits = (value or {}).get("edits") or []
    if not isinstance(edits, list):
        raise bad_request("'context_management.edits' must be an array", "context_management.edits")
    turns: int | None = DEFAULT_THINKING_TURNS
    for i, edit in enumerate(edits):
        where = f"context_management.edits[{i}]"
        if not isinstance(edit, dict) or edit.get("type") != "clear_thinking_20251015":
            got = edit.get("type") if isinstance(edit, dict) else edit
            raise bad_request(
                f"'{where}.type': mlxd applies only the clear_thinking_20251015 edit, not {got!r}",
                f"{where}.type",
            )
        refuse_unknown(edit, ("type", "keep"), "context edit", where)
        turns = _keep(edit.get("keep", {"type": "thinking_turns", "value": 1}), f"{where}.keep")
    return turns


def _keep(keep: Any, where: str) -> int | None:
    if keep == "all":
        return None
    value = keep.get("value") if isinstance(keep, dict) else None
    if (
        not isinstance(keep, dict)
        or keep.get("type") != "thinking_turns"
        or set(keep) != {"type", "value"}
        or not isinstance(value, int)
        or isinstance(value, bool)
        or value < 1
    ):
        raise bad_request(
            f'\'{where}\' must be "all" or {{"type": "thinking_turns", "value": n >= 1}}', where
        )
    return value
