"""Tool calling: does the model's template take tools, in which format does it call them, and
parsing one call block into OpenAI's ``tool_calls`` entries.

The formats are mlx-lm's tool parsers (``mlx_lm/tool_parsers``), named the way mlx-lm names them.
mlx-lm imports them by name at run time, which PyInstaller cannot see; ``PARSERS`` imports every
one statically, so the frozen binary has them (and mlx-lm's own import finds them too).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlx_lm.tokenizer_utils import _infer_tool_parser
from mlx_lm.tool_parsers import (
    function_gemma,
    gemma4,
    glm47,
    json_tools,
    kimi_k2,
    kimi_k3,
    laguna,
    longcat,
    minicpm5,
    minimax_m2,
    mistral,
    muse_spark,
    pythonic,
    qwen3_coder,
)

from mlxd.transport.errors import bad_request

PARSERS = {
    m.__name__.rsplit(".", 1)[-1]: m
    for m in (
        function_gemma,
        gemma4,
        glm47,
        json_tools,
        kimi_k2,
        kimi_k3,
        laguna,
        longcat,
        minicpm5,
        minimax_m2,
        mistral,
        muse_spark,
        pythonic,
        qwen3_coder,
    )
}

# A Jinja template that takes tools reads the ``tools`` variable; one that does not never names it.
_TOOLS_VARIABLE = re.compile(r"\btools\b")


@dataclass(frozen=True)
class ToolFormat:
    name: str  # mlx-lm's parser name, e.g. "json_tools"
    start: str  # the text that opens a call block
    end: str  # the text that closes it; "" = the block runs to the end
    parse: Callable[[str, Any], Any]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON text, as OpenAI sends it

    def to_json(self, index: int | None = None) -> dict:
        out = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        return out if index is None else {"index": index, **out}


def template_takes_tools(tokenizer) -> bool:
    """Whether the chat template renders tool definitions. A Python renderer (mlx-lm's
    ``chat_template_type``) is trusted when mlx-lm found a tool format for the model."""
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):  # named templates: transformers picks "tool_use" for tools
        source = "\n".join(v for v in source.values() if isinstance(v, str))
    if isinstance(source, str):
        return bool(_TOOLS_VARIABLE.search(source))
    return getattr(tokenizer, "has_tool_calling", False)


def tool_format(tokenizer) -> ToolFormat | None:
    """The model's tool-call format: what mlx-lm chose at load (an MLX directory), else what
    mlx-lm infers from the template and vocabulary (a GGUF file, whose tokenizer we build)."""
    name = (getattr(tokenizer, "init_kwargs", None) or {}).get("tool_parser_type")
    if name is None:
        try:
            name = _infer_tool_parser(tokenizer)
        except Exception:  # an odd tokenizer without get_vocab: no tool calling, not a crash
            name = None
    if name is None or (module := PARSERS.get(name)) is None:
        return None
    return ToolFormat(name, module.tool_call_start, module.tool_call_end, module.parse_tool_call)


def check_support(takes_tools: bool, fmt: ToolFormat | None, param: str) -> ToolFormat:
    """The format to parse calls with, or the 400 that says why this model cannot call tools."""
    if not takes_tools:
        raise bad_request(
            "this model's chat template has no tool support (it never reads "
            "'tools'), so it cannot call tools",
            param,
            "unsupported_parameter",
        )
    if fmt is None:
        raise bad_request(
            "this model's chat template takes tools, but its tool-call format is "
            "not one mlxd can parse",
            param,
            "unsupported_parameter",
        )
    return fmt


def parse_block(fmt: ToolFormat, text: str, tools: list | None) -> list[ToolCall] | None:
    """The calls in one block (the text between the markers), or None when it does not parse
    (typically cut short by max_tokens): the caller then keeps the text as content."""
    try:
        parsed = fmt.parse(text, tools)
    except Exception:  # the parsers raise ValueError, JSONDecodeError, SyntaxError, KeyError...
        return None
    calls = []
    for item in parsed if isinstance(parsed, list) else [parsed]:
        call = _call(item)
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _call(item: Any) -> ToolCall | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        return None
    arguments = item.get("arguments", item.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except json.JSONDecodeError:
            return None
    else:
        arguments = json.dumps(arguments, ensure_ascii=False)
    call_id = item.get("id")
    if not isinstance(call_id, str) or not call_id:
        call_id = "call_" + uuid.uuid4().hex[:24]
    return ToolCall(call_id, item["name"], arguments)


# ----- forcing a call (tool_choice "required" or a named function) -----

EMPTY_PARAMETERS = {
    "type": "object",
    "properties": {},
    "required": [],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class ForcedCall:
    """What the constrained decoder must write: ``prefix``, a JSON value valid against
    ``schema``, then ``suffix`` (the text around the JSON in the model's call format)."""

    prefix: str
    schema: dict
    suffix: str


def _call_schema(tool: dict) -> dict:
    function = tool["function"]
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": [function["name"]]},
            "arguments": function.get("parameters") or EMPTY_PARAMETERS,
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _any_call(tools: list[dict]) -> dict:
    schemas = [_call_schema(t) for t in tools]
    return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}


def _json_tools(fmt: ToolFormat, tools: list[dict]) -> ForcedCall:
    # Hermes / Qwen 2.5 / Qwen 3: <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>
    return ForcedCall(fmt.start + "\n", _any_call(tools), "\n" + fmt.end)


def _mistral(fmt: ToolFormat, tools: list[dict]) -> ForcedCall:
    # [TOOL_CALLS][{"name": ..., "arguments": {...}}]: the JSON form mlx-lm's parser reads first.
    return ForcedCall(
        fmt.start, {"type": "array", "items": _any_call(tools), "minItems": 1, "maxItems": 1}, ""
    )


# Formats whose calls are JSON between fixed texts; the others (XML-like, Python-like) cannot be
# written by a JSON-schema decoder, so "required" and named choices are refused for them.
FORCEABLE: dict[str, Callable[[ToolFormat, list[dict]], ForcedCall]] = {
    "json_tools": _json_tools,
    "mistral": _mistral,
}


def forced_call(fmt: ToolFormat, tools: list[dict], param: str, asked: str) -> ForcedCall:
    build = FORCEABLE.get(fmt.name)
    if build is None:
        raise bad_request(
            f"this model calls tools in the {fmt.name!r} format, which mlxd cannot "
            f"enforce, so it cannot honour {asked}",
            param,
            "unsupported_parameter",
        )
    return build(fmt, tools)
