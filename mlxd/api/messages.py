"""The chat-only parts of a request body: ``messages``, ``tools``, ``tool_choice`` and
``parallel_tool_calls``, validated into what the chat template reads.

Each role keeps the keys its template may read. Assistant tool calls keep OpenAI's shape, except
that ``arguments`` (a JSON text on the wire) becomes the object it encodes, as Hugging Face
templates expect (they write ``tool_call.arguments | tojson``); mlx_lm.server does the same.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlxd.api import images
from mlxd.transport.errors import bad_request


def refuse_unknown(obj: dict, allowed: tuple[str, ...], what: str, where: str) -> None:
    """A key the API does not define is a 400 naming it (README: no silent ignoring)."""
    for key in obj:
        if key not in allowed:
            raise bad_request(
                f"Unrecognized {what} field: {key}", f"{where}.{key}", "unknown_parameter"
            )


MAX_MESSAGES = 4096
MAX_TOOLS = 128  # OpenAI's limit
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function and schema names
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
# Keys a message may carry besides role and content. ``None`` = accepted only as null (OpenAI
# defines it; mlxd has nothing to do with it); the SDK sends ``refusal: null`` back with the
# assistant messages it received.
_KEYS: dict[str, dict[str, bool]] = {
    "system": {"name": False},
    "user": {"name": False},
    "assistant": {
        "name": False,
        "refusal": False,
        "function_call": False,
        "audio": False,
        "tool_calls": True,
        "reasoning_content": True,
    },
    "tool": {"tool_call_id": True},
}


def messages(obj: dict) -> tuple[dict, ...]:
    return tuple(_message(m, f"messages[{i}]") for i, m in enumerate(message_list(obj)))


def message_list(obj: dict) -> list:
    """A body's ``messages``: there, a non-empty array, within MAX_MESSAGES (chat and the
    Anthropic Messages API alike; each parses the items its own way)."""
    value = obj.get("messages")
    if value is None:
        raise bad_request("'messages' is required", "messages")
    if not isinstance(value, list) or not value:
        raise bad_request("'messages' must be a non-empty array of message objects", "messages")
    if len(value) > MAX_MESSAGES:
        raise bad_request(f"'messages' holds more than {MAX_MESSAGES} messages", "messages")
    return value


def _message(msg: Any, where: str) -> dict:
    if not isinstance(msg, dict):
        raise bad_request(f"'{where}' must be an object, not {kind(msg)}", where)
    role = msg.get("role")
    if role not in ROLES:
        raise bad_request(
            f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role"
        )
    role = ROLES[role]
    allowed = _KEYS[role]
    for key, value in msg.items():
        if key in ("role", "content") or (key in allowed and (allowed[key] or value is None)):
            continue
        raise bad_request(
            f"'{where}.{key}' is not supported by mlxd", f"{where}.{key}", "unsupported_parameter"
        )
    out: dict = {"role": role}
    calls = msg.get("tool_calls")
    if role == "assistant" and msg.get("content") is None:  # OpenAI: null beside tool calls
        out["content"] = ""
    else:
        out["content"] = _content(msg.get("content"), f"{where}.content")
    if calls is not None:
        out["tool_calls"] = _history_calls(calls, f"{where}.tool_calls")
    if role == "assistant" and msg.get("reasoning_content") is not None:
        out["reasoning_content"] = _string(msg["reasoning_content"], f"{where}.reasoning_content")
    if role == "tool":
        out["tool_call_id"] = _string(msg.get("tool_call_id"), f"{where}.tool_call_id")
    return out


def _content(content: Any, where: str) -> str | list[dict]:
    """A string, or the text of text parts joined; with image parts, the parts in order:
    ``{"type": "text", "text"}`` and ``{"type": "image", "ref": ImageRef}`` (VLM templates read
    the first two keys; ``ref`` says where the image comes from)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(
            f"'{where}' must be a string or an array of content parts, not {kind(content)}", where
        )
    parts: list[dict] = []
    for i, part in enumerate(content):
        here = f"{where}[{i}]"
        part_kind = part.get("type") if isinstance(part, dict) else kind(part)
        if part_kind == "image_url":
            parts.append({"type": "image", "ref": images.chat_part(part, here)})
            continue
        if part_kind != "text":
            raise bad_request(
                f"'{here}' must be a text or image_url part; {part_kind!r} parts are not supported",
                f"{here}.type",
            )
        if not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:
            raise bad_request(f'\'{here}\' must be {{"type": "text", "text": string}}', here)
        parts.append({"type": "text", "text": part["text"]})
    if any(p["type"] == "image" for p in parts):
        return parts
    return "".join(p["text"] for p in parts)


def image_refs(messages: tuple[dict, ...]) -> list[images.ImageRef]:
    """The image parts of validated messages, in order."""
    return [
        part["ref"]
        for m in messages
        if isinstance(m["content"], list)
        for part in m["content"]
        if part["type"] == "image"
    ]


def _history_calls(calls: Any, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise bad_request(f"'{where}' must be an array of tool calls", where)
    out = []
    for i, call in enumerate(calls):
        here = f"{where}[{i}]"
        if (
            not isinstance(call, dict)
            or call.get("type", "function") != "function"
            or set(call) - {"id", "type", "function"}
        ):
            raise bad_request(
                f'\'{here}\' must be {{"id", "type": "function", '
                '"function": {"name", "arguments"}}',
                here,
            )
        function = call.get("function")
        if not isinstance(function, dict) or set(function) - {"name", "arguments"}:
            raise bad_request(
                f'\'{here}.function\' must be {{"name", "arguments"}}', f"{here}.function"
            )
        name = _string(function.get("name"), f"{here}.function.name")
        arguments = _string(function.get("arguments", "{}"), f"{here}.function.arguments")
        try:
            decoded = json.loads(arguments)
        except json.JSONDecodeError:
            decoded = arguments  # the model wrote something else once; render it as written
        out.append(
            {
                "id": _string(call.get("id", ""), f"{here}.id"),
                "type": "function",
                "function": {"name": name, "arguments": decoded},
            }
        )
    return out


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"'{where}' must be a string, not {kind(value)}", where)
    return value


# ----- tools, tool_choice, parallel_tool_calls -----


def tools(obj: dict) -> tuple[dict, ...]:
    return tool_list(obj, _tool, MAX_TOOLS, "function tools", "function.name")


def tool_list(
    obj: dict,
    parse_one: Callable[[Any, str], dict],
    limit: int,
    what: str,
    name_at: str,
) -> tuple[dict, ...]:
    """A body's 'tools' array (chat, Responses, Anthropic Messages), each tool turned by
    ``parse_one(tool, where)`` into a chat function (name, description, parameters): absent is
    none; at most ``limit``; names unique (a duplicate is reported at ``tools[i].<name_at>``)."""
    value = obj.get("tools")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise bad_request(f"'tools' must be an array of {what}", "tools")
    if len(value) > limit:
        raise bad_request(f"'tools' takes at most {limit} tools", "tools")
    out, names = [], set()
    for i, tool in enumerate(value):
        function = parse_one(tool, f"tools[{i}]")
        if function["name"] in names:
            raise bad_request(f"two tools are named {function['name']!r}", f"tools[{i}].{name_at}")
        names.add(function["name"])
        out.append({"type": "function", "function": function})
    return tuple(out)


def _tool(tool: Any, where: str) -> dict:
    if (
        not isinstance(tool, dict)
        or tool.get("type") != "function"
        or set(tool) - {"type", "function"}
    ):
        raise bad_request(
            f'\'{where}\' must be {{"type": "function", "function": {{...}}}}; '
            "mlxd supports function tools only",
            where,
        )
    function = tool.get("function")
    if not isinstance(function, dict):
        raise bad_request(f"'{where}.function' must be an object", f"{where}.function")
    refuse_unknown(
        function, ("name", "description", "parameters", "strict"), "tool", f"{where}.function"
    )
    name = function.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise bad_request(
            "a function name must be 1 to 64 of a-z, A-Z, 0-9, _ and -", f"{where}.function.name"
        )
    out: dict = {"name": name}
    for key, kind_wanted, what in (
        ("description", str, "a string"),
        ("parameters", dict, "an object (a JSON schema)"),
        ("strict", bool, "a boolean"),
    ):
        value = function.get(key)
        if value is None:
            continue
        if not isinstance(value, kind_wanted):
            raise bad_request(f"'{where}.function.{key}' must be {what}", f"{where}.function.{key}")
        out[key] = value
    return out


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # "none", "auto", "required", or "function" (one named)
    name: str | None = None  # the function a "function" choice names

    @property
    def forced(self) -> bool:
        """The reply must be a call (enforced by constrained decoding)."""
        return self.mode in ("required", "function")


def tool_choice(obj: dict, defined: tuple[dict, ...]) -> ToolChoice:
    value = obj.get("tool_choice")
    if value is None:
        return ToolChoice("auto" if defined else "none")
    if value in ("none", "auto", "required"):
        if value != "none" and not defined:
            raise bad_request(f"tool_choice {value!r} needs 'tools'", "tool_choice")
        return ToolChoice(value)
    if (
        isinstance(value, dict)
        and value.get("type") == "function"
        and set(value) <= {"type", "function"}
        and isinstance(value.get("function"), dict)
        and set(value["function"]) == {"name"}
    ):
        name = value["function"]["name"]
        if name not in {t["function"]["name"] for t in defined}:
            raise bad_request(f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice")
        return ToolChoice("function", name)
    raise bad_request(
        "'tool_choice' must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
        "tool_choice",
    )


def parallel_tool_calls(obj: dict, defined: tuple[dict, ...]) -> bool:
    value = obj.get("parallel_tool_calls")
    if value is None:
        return True
    if not isinstance(value, bool):
        raise bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    if not defined:  # OpenAI refuses it without tools too
        raise bad_request(
            "'parallel_tool_calls' is only allowed when 'tools' are given", "parallel_tool_calls"
        )
    return value


def kind(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), "a value")
