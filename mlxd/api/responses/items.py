"""Responses API items: ``input`` validated into normalized items (each with an id, as
``input_items`` lists them), and items -> the chat messages the model's template reads.

Items map onto chat messages as Codex CLI and the OpenAI SDK use them: a message is a message
(``developer`` is a system message, as in chat; ``input_image`` parts are chat's image parts, for
a vision model); ``function_call`` items join the assistant turn
before them as its ``tool_calls``; a ``function_call_output`` is a ``tool`` message; a
``reasoning`` item's text is the ``reasoning_content`` of the assistant turn that follows it (a
reasoning item that no assistant turn follows has nothing to belong to and is left out).
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from typing import Any

from mlxd.api import images
from mlxd.api.messages import MAX_MESSAGES, kind
from mlxd.transport.errors import bad_request

ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
TEXT_PARTS = ("input_text", "output_text")  # either is taken in any role, as OpenAI does
STATUSES = ("in_progress", "completed", "incomplete")
# Reasoning text handed to a client that keeps no state (include reasoning.encrypted_content):
# not encrypted (a local server has no secret to keep from its own client), only marked as ours.
OPAQUE_PREFIX = "mlxd1:"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def encode_reasoning(text: str) -> str:
    return OPAQUE_PREFIX + base64.b64encode(text.encode("utf-8")).decode("ascii")


def decode_reasoning(blob: str) -> str | None:
    """Our own ``encrypted_content`` back to text; None for another server's (unreadable)."""
    if not blob.startswith(OPAQUE_PREFIX):
        return None
    try:
        return base64.b64decode(blob[len(OPAQUE_PREFIX) :], validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


# ----- input -> normalized items -----


def parse_input(value: Any) -> tuple[dict, ...]:
    if isinstance(value, str):
        return (_message({"role": "user", "content": value}, "input"),)
    if not isinstance(value, list) or not value:
        raise bad_request("'input' must be a string or a non-empty array of items", "input")
    if len(value) > MAX_MESSAGES:
        raise bad_request(f"'input' holds more than {MAX_MESSAGES} items", "input")
    return tuple(_item(item, f"input[{i}]") for i, item in enumerate(value))


def _item(item: Any, where: str) -> dict:
    if not isinstance(item, dict):
        raise bad_request(f"'{where}' must be an object, not {kind(item)}", where)
    item_type = item.get("type", "message" if "role" in item else None)
    parse = ITEM_PARSERS.get(item_type)
    if parse is None:
        raise bad_request(
            f"input items of type {item_type!r} are not supported by mlxd (messages, "
            "function_call, function_call_output and reasoning are)",
            f"{where}.type",
            "unsupported_parameter",
        )
    return parse(item, where)


def _allow(item: dict, keys: tuple[str, ...], where: str) -> None:
    for key in item:
        if key not in keys:
            raise bad_request(
                f"'{where}.{key}' is not supported by mlxd", f"{where}.{key}", "unknown_parameter"
            )
    status = item.get("status")
    if status is not None and status not in STATUSES:
        raise bad_request(f"'{where}.status' must be one of {', '.join(STATUSES)}", where)


def _string(item: dict, key: str, where: str, required: bool = True) -> str | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise bad_request(f"'{where}.{key}' must be a string, not {kind(value)}", f"{where}.{key}")
    return value


def _item_id(item: dict, prefix: str, where: str) -> str:
    return _string(item, "id", where, required=False) or new_id(prefix)


def _message(item: dict, where: str) -> dict:
    _allow(item, ("type", "role", "content", "id", "status", "phase"), where)
    role = item.get("role")
    if role not in ROLES:
        raise bad_request(
            f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role"
        )
    content = item.get("content")
    text_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        parts = [_text_part(text_type, content)]
    elif isinstance(content, list):
        parts = [_part(p, f"{where}.content[{i}]") for i, p in enumerate(content)]
    else:
        raise bad_request(
            f"'{where}.content' must be a string or an array of text parts", f"{where}.content"
        )
    out = {"type": "message", "id": _item_id(item, "msg", where), "role": role, "content": parts}
    return {**out, "status": "completed"}


def _text_part(part_type: str, text: str) -> dict:
    return {
        "type": part_type,
        "text": text,
        **({"annotations": []} if part_type == "output_text" else {}),
    }


def _part(part: Any, where: str) -> dict:
    part_type = part.get("type") if isinstance(part, dict) else None
    if part_type == "refusal":
        _allow(part, ("type", "refusal"), where)
        return {"type": "refusal", "refusal": _string(part, "refusal", where)}
    if part_type == "input_image":  # for a vision model; a text model refuses it by name
        _allow(part, ("type", "image_url", "detail", "file_id"), where)
        if part.get("file_id") is not None:
            raise bad_request(
                "mlxd has no file store: send the image as 'image_url' (a data: URL)",
                f"{where}.file_id",
                "unsupported_parameter",
            )
        ref = images.responses_part(part, where)
        return {"type": "input_image", "image_url": ref.url, "detail": ref.detail}
    if part_type not in TEXT_PARTS:
        raise bad_request(
            f"'{where}' must be a text or input_image part; {part_type or kind(part)!r} parts "
            "are not supported",
            f"{where}.type",
            "unsupported_parameter",
        )
    # Output text parts come back with the annotations and logprobs they were sent with.
    _allow(part, ("type", "text", "annotations", "logprobs", "prompt_cache_breakpoint"), where)
    return _text_part(part_type, _string(part, "text", where) or "")


def _function_call(item: dict, where: str) -> dict:
    _allow(item, ("type", "id", "call_id", "name", "arguments", "status", "namespace"), where)
    return {
        "type": "function_call",
        "id": _item_id(item, "fc", where),
        "call_id": _string(item, "call_id", where),
        "name": _string(item, "name", where),
        "arguments": _string(item, "arguments", where),
        "status": "completed",
    }


def _function_call_output(item: dict, where: str) -> dict:
    _allow(item, ("type", "id", "call_id", "output", "status", "name", "namespace"), where)
    output = item.get("output")
    if isinstance(output, list):
        output = "".join(_output_text(p, f"{where}.output[{i}]") for i, p in enumerate(output))
    elif not isinstance(output, str):
        raise bad_request(
            f"'{where}.output' must be a string or an array of text parts", f"{where}.output"
        )
    return {
        "type": "function_call_output",
        "id": _item_id(item, "fco", where),
        "call_id": _string(item, "call_id", where),
        "output": output,
        "status": "completed",
    }


def _output_text(part: Any, where: str) -> str:
    """A tool's output part: text only (a tool message holds text in every chat template)."""
    parsed = _part(part, where)
    if "text" not in parsed:
        raise bad_request(
            f"'{where}': a function_call_output holds text parts only in mlxd",
            f"{where}.type",
            "unsupported_parameter",
        )
    return parsed["text"]


def _reasoning(item: dict, where: str) -> dict:
    _allow(item, ("type", "id", "summary", "content", "encrypted_content", "status"), where)
    out: dict = {"type": "reasoning", "id": _item_id(item, "rs", where)}
    for key, part_type in (("summary", "summary_text"), ("content", "reasoning_text")):
        parts = item.get(key) or []
        if not isinstance(parts, list) or not all(
            isinstance(p, dict) and p.get("type") == part_type and isinstance(p.get("text"), str)
            for p in parts
        ):
            raise bad_request(
                f"'{where}.{key}' must be an array of {part_type} parts", f"{where}.{key}"
            )
        out[key] = [{"type": part_type, "text": p["text"]} for p in parts]
    blob = _string(item, "encrypted_content", where, required=False)
    if blob is not None:
        out["encrypted_content"] = blob
    return out


ITEM_PARSERS: dict[str | None, Callable[[dict, str], dict]] = {
    "message": _message,
    "function_call": _function_call,
    "function_call_output": _function_call_output,
    "reasoning": _reasoning,
}


# ----- items -> chat messages -----


def reasoning_text(item: dict) -> str:
    """What a reasoning item thought: its text, else our own encoded copy, else its summary."""
    if item.get("content"):
        return "".join(p["text"] for p in item["content"])
    decoded = decode_reasoning(item.get("encrypted_content") or "")
    if decoded is not None:
        return decoded
    return "\n\n".join(p["text"] for p in item.get("summary") or [])


def message_content(item: dict, where: str) -> str | list[dict]:
    """A message's text; with images, chat's parts (``text`` and ``image`` with its ref), as
    mlxd/api/messages.py makes them for a vision model's prompt."""
    parts: list[dict] = []
    for j, part in enumerate(item["content"]):
        if part["type"] == "input_image":
            ref = images.ImageRef(f"{where}.content[{j}]", part["image_url"], part["detail"])
            parts.append({"type": "image", "ref": ref})
            continue
        text = part.get("text", part.get("refusal", ""))
        if parts and parts[-1]["type"] == "text":
            parts[-1]["text"] += text
        else:
            parts.append({"type": "text", "text": text})
    if any(p["type"] == "image" for p in parts):
        return parts
    return "".join(p["text"] for p in parts)


def to_messages(
    instructions: str | None, items: tuple[dict, ...], first_input: int = 0
) -> tuple[dict, ...]:
    """The chat messages for ``instructions`` then ``items`` (see the module's docstring);
    ``items[first_input:]`` are this request's ``input`` (for the names in errors), the ones
    before come from ``previous_response_id``."""
    out: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    thought: str | None = None  # a reasoning item's text, waiting for its assistant turn
    for k, item in enumerate(items):
        where = f"input[{k - first_input}]" if k >= first_input else "previous_response_id"
        match item["type"]:
            case "reasoning":
                thought = (thought or "") + reasoning_text(item)
            case "message":
                role = ROLES[item["role"]]
                out.append({"role": role, "content": message_content(item, where)})
            case "function_call":
                turn = out[-1] if out and out[-1]["role"] == "assistant" else None
                if turn is None or thought is not None:
                    turn = {"role": "assistant", "content": ""}
                    out.append(turn)
                turn.setdefault("tool_calls", []).append(_template_call(item))
            case "function_call_output":
                out.append(
                    {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
                )
        if item["type"] != "reasoning":
            if thought is not None and out[-1]["role"] == "assistant":
                out[-1]["reasoning_content"] = thought
            thought = None  # thinking before a user or tool turn belongs to no reply
    return tuple(out)


def _template_call(item: dict) -> dict:
    """A call as chat templates read it: ``arguments`` decoded (they write ``| tojson``)."""
    try:
        arguments = json.loads(item["arguments"])
    except json.JSONDecodeError:
        arguments = item["arguments"]  # the model wrote something else once; render it as is
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": arguments},
    }
