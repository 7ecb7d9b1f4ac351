"""POST /v1/responses bodies -> frozen, validated records (parsed once, here).

The same policy as chat (README, "Unknown and unsupported fields"): every field is honoured or
refused with a 400 whose ``param`` names it. The tools, tool choice and text format become what
the chat plan reads (mlxd/api/chatplan.py), so that the Responses API gets the same templates,
tool parsing, constrained decoding and reasoning split as chat completions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlxd.api.fieldtable import Body
from mlxd.api.messages import MAX_TOOLS, NAME_PATTERN, ToolChoice, kind, tool_list
from mlxd.api.responses.body import (
    INPUT_TOKENS_BODY,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE_CHARS,
    RESPONSES_BODY,
)
from mlxd.api.responses.items import parse_input
from mlxd.api.schema import (
    Fields,
    ResponseFormat,
    Sampling,
    compile_grammar,
    json_schema_format,
    parse_object,
)
from mlxd.transport.errors import bad_request

# OpenAI's effort names; any but "none" means "think" (no budget is set: see README).
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
ENCRYPTED_REASONING = "reasoning.encrypted_content"

# Fields OpenAI defines that mlxd accepts only where they change nothing.
NEUTRAL_VALUES: dict[str, Callable[[Any], bool]] = {
    "service_tier": lambda v: v in ("auto", "default"),
    "background": lambda v: v is False,
    "top_logprobs": lambda v: v == 0,
    "stream_options": lambda v: v in ({}, {"include_obfuscation": False}),
    "prompt_cache_retention": lambda v: v == "in_memory",
    "prompt": lambda v: False,  # reusable prompt templates live on OpenAI's side
    "conversation": lambda v: False,  # conversations: use previous_response_id
    "truncation": lambda v: v == "disabled",  # "auto" (drop the oldest items) is not done yet
}
# Echoed in the response as given; they change nothing in the output.
ECHOED = ("user", "safety_identifier", "prompt_cache_key")


@dataclass(frozen=True)
class Reasoning:
    effort: str | None = None  # "none": ask the template not to think
    summary: str | None = None  # only "auto" (the whole thinking, as reasoning_text)

    def to_json(self) -> dict:
        return {"effort": self.effort, "summary": self.summary}


@dataclass(frozen=True)
class ResponsesRequest:
    model: str | None
    input: tuple[dict, ...]  # normalized items (items.py), each with an id
    instructions: str | None
    previous_response_id: str | None
    sampling: Sampling
    tools: tuple[dict, ...] = ()  # chat's shape: {"type": "function", "function": {...}}
    tool_choice: ToolChoice = ToolChoice("none")
    tool_choice_echo: Any = "auto"  # as the response object states it
    parallel_tool_calls: bool = True
    text_format: ResponseFormat | None = None
    text: dict = field(default_factory=lambda: {"format": {"type": "text"}})  # echo
    reasoning: Reasoning = Reasoning()
    stream: bool = False
    store: bool = True
    include_reasoning: bool = False  # include "reasoning.encrypted_content"
    metadata: dict = field(default_factory=dict)
    echoed: dict = field(default_factory=dict)  # user, safety_identifier, prompt_cache_key

    BODY: ClassVar[Body] = RESPONSES_BODY

    @classmethod
    def from_json(cls, body: bytes) -> ResponsesRequest:
        obj = parse_object(body)
        fields = Fields(obj, cls.BODY, NEUTRAL_VALUES)
        tools = _tools(obj)
        choice, choice_echo = _tool_choice(obj, tools)
        text_format, text = _text(obj)
        fields.integer("max_tool_calls", 0, 2**31 - 1)
        return cls(
            model=fields.model(),
            input=parse_input(obj.get("input")),
            instructions=fields.optional("instructions", str, "a string"),
            previous_response_id=fields.optional("previous_response_id", str, "a string"),
            sampling=_sampling(fields),
            tools=tools,
            tool_choice=choice,
            tool_choice_echo=choice_echo,
            parallel_tool_calls=obj.get("parallel_tool_calls") is not False,
            text_format=text_format,
            text=text,
            reasoning=_reasoning(obj),
            stream=fields.stream(),
            store=obj.get("store") is not False,
            include_reasoning=_include(obj),
            metadata=_metadata(obj),
            echoed={key: obj.get(key) for key in ECHOED},
        )


class InputTokensRequest(ResponsesRequest):
    """POST /v1/responses/input_tokens: the fields that shape the prompt, nothing else."""

    BODY: ClassVar[Body] = INPUT_TOKENS_BODY


def _sampling(fields: Fields) -> Sampling:
    return Sampling(
        max_tokens=fields.integer("max_output_tokens", 1, 2**31 - 1),
        temperature=fields.number("temperature", 0.0, 2.0),
        top_p=fields.number("top_p", 0.0, 1.0, low_open=True),
        stop=(),
        seed=fields.integer("seed", -(2**63), 2**64 - 1),
        top_k=fields.integer("top_k", 0, 2**31 - 1) or 0,
        min_p=fields.number("min_p", 0.0, 1.0) or 0.0,
        repetition_penalty=fields.number("repetition_penalty", 0.0, 10.0, low_open=True) or 1.0,
    )


# ----- tools and tool_choice -----

TOOL_KEYS = ("type", "name", "description", "parameters", "strict")
# Function-tool keys OpenAI defines and mlxd does not implement: accepted at these values only.
TOOL_NEUTRAL = {
    "allowed_callers": lambda v: v in (None, ["direct"]),
    "defer_loading": lambda v: v in (None, False),
    "async": lambda v: v in (None, False),
    "output_schema": lambda v: v is None,
}


def _tools(obj: dict) -> tuple[dict, ...]:
    return tool_list(obj, _tool, MAX_TOOLS, "function tools", "name")


def _tool(tool: Any, where: str) -> dict:
    tool_type = tool.get("type") if isinstance(tool, dict) else kind(tool)
    if tool_type != "function":
        raise bad_request(
            f"tools of type {tool_type!r} are not supported by mlxd; only function tools are",
            f"{where}.type",
            "unsupported_parameter",
        )
    for key, value in tool.items():
        neutral = TOOL_NEUTRAL.get(key)
        if key not in TOOL_KEYS and (neutral is None or not neutral(value)):
            code = "unknown_parameter" if neutral is None else "unsupported_parameter"
            raise bad_request(f"'{where}.{key}' is not supported by mlxd", f"{where}.{key}", code)
    name = tool.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise bad_request(
            "a function name must be 1 to 64 of a-z, A-Z, 0-9, _ and -", f"{where}.name"
        )
    out: dict = {"name": name}
    for key, wanted, what in (
        ("description", str, "a string"),
        ("parameters", dict, "an object (a JSON schema)"),
        ("strict", bool, "a boolean"),
    ):
        if tool.get(key) is None:
            continue
        if not isinstance(tool[key], wanted):
            raise bad_request(f"'{where}.{key}' must be {what}", f"{where}.{key}")
        out[key] = tool[key]
    return out


def _tool_choice(obj: dict, tools: tuple[dict, ...]) -> tuple[ToolChoice, Any]:
    value = obj.get("tool_choice")
    names = {t["function"]["name"] for t in tools}
    if value is None or value == "auto":
        return ToolChoice("auto" if tools else "none"), "auto"
    if value in ("none", "required"):
        if value == "required" and not tools:
            raise bad_request("tool_choice 'required' needs 'tools'", "tool_choice")
        return ToolChoice(value), value
    if (
        isinstance(value, dict)
        and value.get("type") == "function"
        and set(value)
        == {
            "type",
            "name",
        }
    ):
        if value["name"] not in names:
            raise bad_request(
                f"tool_choice names {value['name']!r}, which is not in 'tools'", "tool_choice"
            )
        return ToolChoice("function", value["name"]), value
    raise bad_request(
        "'tool_choice' must be 'none', 'auto', 'required' or "
        '{"type": "function", "name": ...}; other tool choices are not supported by mlxd',
        "tool_choice",
        "unsupported_parameter",
    )


# ----- text, reasoning, include, metadata -----


def _text(obj: dict) -> tuple[ResponseFormat | None, dict]:
    value = obj.get("text") or {}
    _known(value, ("format", "verbosity"), "text")
    if value.get("verbosity") not in (None, "medium"):
        raise bad_request(
            "'text.verbosity' is not supported by mlxd: the model writes as it does; send "
            'it unset or "medium"',
            "text.verbosity",
            "unsupported_parameter",
        )
    fmt = value.get("format") or {"type": "text"}
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    echo = {"format": fmt, "verbosity": "medium"}
    if fmt_type == "text" and set(fmt) == {"type"}:
        return None, echo
    if fmt_type == "json_object" and set(fmt) == {"type"}:
        return ResponseFormat("json_object", grammar=compile_grammar(None, "text.format")), echo
    if fmt_type == "json_schema":
        spec = {k: v for k, v in fmt.items() if k != "type"}
        return json_schema_format(spec, "text.format"), echo
    raise bad_request(
        '\'text.format\' must be {"type": "text"}, {"type": "json_object"} or '
        '{"type": "json_schema", "name", "schema", "strict"}',
        "text.format",
    )


def _reasoning(obj: dict) -> Reasoning:
    value = obj.get("reasoning") or {}
    _known(value, ("effort", "summary", "generate_summary", "context", "mode"), "reasoning")
    for key in ("context", "mode"):
        if value.get(key) is not None:
            raise bad_request(
                f"'reasoning.{key}' is not supported by mlxd",
                f"reasoning.{key}",
                "unsupported_parameter",
            )
    effort = value.get("effort")
    if effort is not None and effort not in EFFORTS:
        raise bad_request(
            f"'reasoning.effort' must be one of {', '.join(EFFORTS)}", "reasoning.effort"
        )
    summary = value.get("summary") or value.get("generate_summary")
    if summary not in (None, "auto"):
        raise bad_request(
            "mlxd writes no reasoning summaries: the thinking comes back whole, as "
            "reasoning_text; send 'reasoning.summary' unset or \"auto\"",
            "reasoning.summary",
            "unsupported_parameter",
        )
    return Reasoning(effort, summary)


def _include(obj: dict) -> bool:
    wanted = obj.get("include") or []
    for i, item in enumerate(wanted):
        if item != ENCRYPTED_REASONING:
            raise bad_request(
                f"mlxd cannot include {item!r}; only {ENCRYPTED_REASONING!r}",
                f"include[{i}]",
                "unsupported_parameter",
            )
    return bool(wanted)


def _metadata(obj: dict) -> dict:
    value = obj.get("metadata") or {}
    if len(value) > MAX_METADATA_PAIRS or not all(
        isinstance(v, str)
        and len(k) <= MAX_METADATA_KEY_CHARS
        and len(v) <= MAX_METADATA_VALUE_CHARS
        for k, v in value.items()
    ):
        raise bad_request(
            f"'metadata' holds up to {MAX_METADATA_PAIRS} pairs of strings (keys up to "
            f"{MAX_METADATA_KEY_CHARS} characters, values up to {MAX_METADATA_VALUE_CHARS})",
            "metadata",
        )
    return dict(value)


def _known(value: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(value, dict):
        raise bad_request(f"'{where}' must be an object", where)
    for key in value:
        if key not in keys:
            raise bad_request(
                f"Unrecognized {where} field: {key}", f"{where}.{key}", "unknown_parameter"
            )
