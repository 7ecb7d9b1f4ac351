"""Anthropic ``system`` and ``messages`` -> the chat messages a template reads.

Messages are roles holding content blocks. Consecutive turns of one role are one turn (Anthropic
combines them). A user turn becomes a ``user`` message for its text and images and one ``tool``
message per ``tool_result`` (in order); an assistant turn becomes one ``assistant`` message: its
text as ``content``, its ``tool_use`` blocks as ``tool_calls`` (the input object as the arguments,
as templates expect) and its ``thinking`` as ``reasoning_content`` where the thinking of that turn
is kept. Separate text blocks are separate paragraphs, joined with a blank line; with an
``image`` block (in a user turn or a tool result) the content stays a list of chat's text and
image parts, which a vision model's processor reads and a text model refuses, as chat does. A
final assistant turn is a prefill: the reply continues its text.

``cache_control`` is accepted on every block and ignored: mlxd's prompt cache keeps every
prompt's prefix without being asked. ``redacted_thinking`` is dropped: it is another server's
encrypted thinking, which no template can read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlxd.api import images
from mlxd.api.messages import kind, message_list
from mlxd.transport.errors import bad_request

BLOCK_SEPARATOR = "\n\n"
TOOL_ERROR_PREFIX = "Error: "  # how a tool_result with is_error reaches the template

# The keys each block type may carry (Anthropic's, for the blocks mlxd reads).
BLOCK_KEYS: dict[str, tuple[str, ...]] = {
    "text": ("type", "text", "cache_control", "citations"),
    "image": ("type", "source", "cache_control"),
    "tool_use": ("type", "id", "name", "input", "cache_control"),
    "tool_result": ("type", "tool_use_id", "content", "is_error", "cache_control"),
    "thinking": ("type", "thinking", "signature"),
    "redacted_thinking": ("type", "data"),
}
ROLES = ("user", "assistant", "system")
# The block types allowed in each place: a message of each role, and a tool result's content.
ALLOWED = {
    "user": ("text", "image", "tool_result"),
    "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
    "system": ("text",),
    "tool_result": ("text", "image"),
}
CACHE_TTLS = ("5m", "1h")


@dataclass(frozen=True)
class Block:
    where: str  # its path in the body, for errors: "messages[2].content[0]"
    body: dict


@dataclass(frozen=True)
class Turn:
    role: str
    blocks: tuple[Block, ...]

    @property
    def from_person(self) -> bool:
        """A user turn with something besides tool results: a new turn of the conversation."""
        return self.role == "user" and any(b.body["type"] == "text" for b in self.blocks)


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict, ...]  # chat messages, system first
    prefill: bool  # the last message is the assistant's, to be continued


def conversation(obj: dict, keep_thinking: int | None) -> Conversation:
    """``keep_thinking``: how many of the latest assistant turns keep their thinking (None: all),
    as Anthropic's ``clear_thinking`` context edit counts them."""
    system = system_text(obj.get("system"), "system")
    turns = _merged([_turn(m, f"messages[{i}]") for i, m in enumerate(message_list(obj))])
    prefill = turns[-1].role == "assistant" and _prefill_text(turns[-1]) != ""
    if turns[-1].role == "assistant" and not prefill:
        turns = turns[:-1]  # an empty final assistant turn continues nothing
    kept = _thinking_kept(turns, keep_thinking)
    out = [{"role": "system", "content": system}] if system is not None else []
    for i, turn in enumerate(turns):
        out.extend(_chat_messages(turn, keep_thinking=i in kept))
    return Conversation(tuple(out), prefill)


def system_text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise bad_request(f"'{where}' must be a string or an array of text blocks", where)
    blocks = [_block(b, f"{where}[{i}]", "system") for i, b in enumerate(value)]
    return BLOCK_SEPARATOR.join(b.body["text"] for b in blocks)


def _turn(msg: Any, where: str) -> Turn:
    if not isinstance(msg, dict):
        raise bad_request(f"'{where}' must be an object, not {kind(msg)}", where)
    role = msg.get("role")
    if role not in ROLES:
        raise bad_request(
            f"'{where}.role' must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role"
        )
    for key in msg:
        if key not in ("role", "content"):
            raise bad_request(f"{where}.{key}: Extra inputs are not permitted", f"{where}.{key}")
    content = msg.get("content")
    if isinstance(content, str):
        return Turn(role, (Block(f"{where}.content", {"type": "text", "text": content}),))
    if not isinstance(content, list):
        raise bad_request(
            f"'{where}.content' must be a string or an array of content blocks", f"{where}.content"
        )
    return Turn(
        role, tuple(_block(b, f"{where}.content[{i}]", role) for i, b in enumerate(content))
    )


def _block(block: Any, where: str, place: str) -> Block:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise bad_request(f"'{where}' must be a content block object with a 'type'", where)
    btype = block["type"]
    if btype not in ALLOWED[place]:
        why = (
            f"is not allowed in a {place} {'block' if place == 'tool_result' else 'message'}"
            if btype in BLOCK_KEYS
            else "is not supported by mlxd (it reads text, image, tool use and thinking blocks)"
        )
        raise bad_request(f"'{where}.type': a {btype!r} block {why}", f"{where}.type")
    for key in block:
        if key not in BLOCK_KEYS[btype]:
            raise bad_request(f"{where}.{key}: Extra inputs are not permitted", f"{where}.{key}")
    _check_cache_control(block.get("cache_control"), f"{where}.cache_control")
    CHECKS[btype](block, where)
    return Block(where, block)


def _check_cache_control(value: Any, where: str) -> None:
    if value is None:
        return
    if (
        not isinstance(value, dict)
        or value.get("type") != "ephemeral"
        or set(value) - {"type", "ttl"}
        or value.get("ttl", "5m") not in CACHE_TTLS
    ):
        raise bad_request(f'\'{where}\' must be {{"type": "ephemeral", "ttl"?: "5m"|"1h"}}', where)


def _need(block: dict, key: str, what: type, where: str, name: str) -> None:
    if not isinstance(block.get(key), what):
        raise bad_request(f"'{where}.{key}' must be {name}", f"{where}.{key}")


def _check_text(block: dict, where: str) -> None:
    _need(block, "text", str, where, "a string")
    if block.get("citations"):
        raise bad_request(
            f"'{where}.citations' is not supported by mlxd (it reads no documents)",
            f"{where}.citations",
        )


def _check_tool_use(block: dict, where: str) -> None:
    _need(block, "id", str, where, "a string")
    _need(block, "name", str, where, "a string")
    _need(block, "input", dict, where, "an object")


def _check_tool_result(block: dict, where: str) -> None:
    _need(block, "tool_use_id", str, where, "a string")
    if block.get("is_error") is not None:
        _need(block, "is_error", bool, where, "a boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise bad_request(
            f"'{where}.content' must be a string or an array of text blocks", f"{where}.content"
        )
    for i, part in enumerate(content):
        _block(part, f"{where}.content[{i}]", "tool_result")


def _check_thinking(block: dict, where: str) -> None:
    _need(block, "thinking", str, where, "a string")
    _need(block, "signature", str, where, "a string")


def _check_redacted(block: dict, where: str) -> None:
    _need(block, "data", str, where, "a string")


CHECKS = {
    "text": _check_text,
    "image": lambda block, where: None,  # its source is read as it becomes a part
    "tool_use": _check_tool_use,
    "tool_result": _check_tool_result,
    "thinking": _check_thinking,
    "redacted_thinking": _check_redacted,
}


def _merged(turns: list[Turn]) -> list[Turn]:
    out: list[Turn] = []
    for turn in turns:
        if out and out[-1].role == turn.role and turn.role != "system":
            out[-1] = Turn(turn.role, out[-1].blocks + turn.blocks)
        else:
            out.append(turn)
    return out


def _thinking_kept(turns: list[Turn], keep: int | None) -> set[int]:
    """The assistant messages whose thinking stays: those of the ``keep`` latest assistant turns
    (None: all). A tool result does not end a turn: a tool loop's thinking stays together."""
    kept: set[int] = set()
    seen, in_turn = 0, False
    for i in reversed(range(len(turns))):
        if turns[i].role == "assistant":
            seen, in_turn = seen + (not in_turn), True
            if keep is None or seen <= keep:
                kept.add(i)
        elif turns[i].from_person:
            in_turn = False
    return kept


def _prefill_text(turn: Turn) -> str:
    for block in turn.blocks:
        if block.body["type"] != "text":
            raise bad_request(
                f"'{block.where}': a final assistant message is continued as a prefill, "
                "which can hold text blocks only",
                block.where,
            )
    text = BLOCK_SEPARATOR.join(b.body["text"] for b in turn.blocks)
    if text != text.rstrip():
        raise bad_request(
            "final assistant content cannot end with trailing whitespace",
            turn.blocks[-1].where,
        )
    return text


def _chat_messages(turn: Turn, keep_thinking: bool) -> list[dict]:
    if turn.role == "assistant":
        return [_assistant(turn, keep_thinking)]
    out: list[dict] = []
    parts: list[Block] = []
    for block in turn.blocks:
        if block.body["type"] != "tool_result":
            parts.append(block)
            continue
        if parts:  # keep the order the blocks came in
            out.append({"role": turn.role, "content": _content(parts)})
            parts = []
        out.append(_tool_message(block))
    if parts:
        out.append({"role": turn.role, "content": _content(parts)})
    return out


def _content(blocks: list[Block]) -> str | list[dict]:
    """Text blocks as one string; with images, chat's parts in order (text and image)."""
    if all(b.body["type"] == "text" for b in blocks):
        return BLOCK_SEPARATOR.join(b.body["text"] for b in blocks)
    return [
        {"type": "text", "text": b.body["text"]}
        if b.body["type"] == "text"
        else {"type": "image", "ref": images.anthropic_block(b.body, b.where)}
        for b in blocks
    ]


def _tool_message(block: Block) -> dict:
    body = block.body
    content = body.get("content") or ""
    if isinstance(content, list):
        where = f"{block.where}.content"
        content = _content([Block(f"{where}[{i}]", part) for i, part in enumerate(content)])
    if body.get("is_error"):
        prefix = {"type": "text", "text": TOOL_ERROR_PREFIX}
        content = TOOL_ERROR_PREFIX + content if isinstance(content, str) else [prefix, *content]
    return {"role": "tool", "tool_call_id": body["tool_use_id"], "content": content}


def _assistant(turn: Turn, keep_thinking: bool) -> dict:
    texts, thoughts, calls = [], [], []
    for block in (b.body for b in turn.blocks):
        match block["type"]:
            case "text":
                texts.append(block["text"])
            case "thinking":
                thoughts.append(block["thinking"])
            case "tool_use":
                calls.append(
                    {
                        "id": block["id"],
                        "type": "function",
                        "function": {"name": block["name"], "arguments": block["input"]},
                    }
                )
    out: dict = {"role": "assistant", "content": BLOCK_SEPARATOR.join(texts)}
    if calls:
        out["tool_calls"] = calls
    if thoughts and keep_thinking:
        out["reasoning_content"] = BLOCK_SEPARATOR.join(thoughts)
    return out
