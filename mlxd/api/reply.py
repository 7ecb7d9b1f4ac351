"""One choice's generated text -> what OpenAI's reply carries: ``content``, ``reasoning_content``
and ``tool_calls``, as stream deltas while it grows and as a message at the end.

The engine sends plain text deltas (stop strings already cut); here a ``MarkerMachine`` sorts
them into answer text, thinking, and tool-call blocks. A tool-call block is held back until it
closes, then parsed with the model's format and sent as one ``tool_calls`` delta (id, name and
the whole arguments string: the OpenAI SDK assembles partial ones, and whole ones as well).
A block that does not parse by the end (cut short by ``max_tokens``, say) is kept as content,
markers and all, so that nothing the model wrote is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlxd.api.markers import NORMAL, REASONING, TOOL, MarkerMachine, Run, Switch, Transitions
from mlxd.api.reasoning import ThinkMarkers
from mlxd.api.toolcalls import ToolCall, ToolFormat, parse_block


@dataclass(frozen=True)
class ReplySpec:
    """How to read every choice of one request (shared; each choice gets its own ``Reply``)."""

    think: ThinkMarkers | None = None  # set: split thinking into reasoning_content
    starts_thinking: bool = False  # the prompt opened the thinking block
    tools: ToolFormat | None = None  # set: parse tool calls
    tool_defs: list | None = None  # the request's tools, for parsers that read types
    max_calls: int | None = None  # parallel_tool_calls false: 1

    def transitions(self) -> Transitions:
        edges: dict[str, list[tuple[str, str]]] = {NORMAL: []}
        if self.think:
            edges[NORMAL].append((self.think.start, REASONING))
            edges[REASONING] = [(self.think.end, NORMAL)]
        if self.tools:
            edges[NORMAL].append((self.tools.start, TOOL))
            if self.think:  # as mlx-lm: a call may begin inside unclosed thinking
                edges[REASONING].append((self.tools.start, TOOL))
            edges[TOOL] = [(self.tools.end, NORMAL)]
        return {state: tuple(e) for state, e in edges.items()}

    def new(self) -> Reply:
        return Reply(self)


class _Trim:
    """Whitespace at the edges of blocks is layout, not text. Trailing whitespace is held until
    more text follows; after a block, leading whitespace is dropped, and one gap (the whitespace
    seen before or after the block) is kept only between two pieces of text."""

    def __init__(self, at_start: bool = False) -> None:
        self.at_start = at_start
        self.held = ""  # trailing whitespace not sent yet
        self.gap = ""  # whitespace that stood before the last block
        self.wrote = False  # any text sent yet

    def push(self, text: str) -> str:
        if self.at_start:
            body = text.lstrip()
            lead, text = text[: len(text) - len(body)], body
            self.gap = self.gap or lead
            if not text:
                return ""
            self.at_start = False
            text = (self.gap if self.wrote else "") + text
            self.gap = ""
        text = self.held + text
        body = text.rstrip()
        self.held = text[len(body) :]
        self.wrote = self.wrote or bool(body)
        return body

    def verbatim(self, text: str) -> str:
        """A block that turned out to be text: it goes out as written, with the gap before it."""
        text, self.gap, self.at_start = self.gap + text, "", False
        self.wrote = self.wrote or bool(text)
        return text

    def boundary(self) -> None:
        self.gap, self.held, self.at_start = self.held or self.gap, "", True

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


@dataclass
class Reply:
    spec: ReplySpec
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.plain = self.spec.think is None and self.spec.tools is None
        start = REASONING if self.spec.think and self.spec.starts_thinking else NORMAL
        self._machine = None if self.plain else MarkerMachine(self.spec.transitions(), start)
        self._content = _Trim()
        self._thought = _Trim(at_start=True)
        self._block: list[str] = []
        self._opened_with = ""

    # ----- streaming -----

    def feed(self, text: str) -> list[dict]:
        """The deltas that ``text`` adds: ``{"content"}``, ``{"reasoning_content"}`` or
        ``{"tool_calls"}`` objects, in order."""
        if self._machine is None:  # plain
            if text:
                self.content.append(text)
            return [{"content": text}] if text else []
        out: list[dict] = []
        for ev in self._machine.feed(text):
            self._apply(ev, out)
        return out

    def finish(self, reason: str) -> tuple[list[dict], str]:
        """The deltas held back until the end, and the finish reason to report."""
        out: list[dict] = []
        if self._machine is not None:  # not plain
            for ev in self._machine.finish():
                self._apply(ev, out)
            if self._machine.state == TOOL:  # a block the end of generation closed
                self._close_block(out)
            self._thought.flush()
            if not self.calls:
                self._emit("content", self._content.flush(), out)
        return out, ("tool_calls" if self.calls and reason == "stop" else reason)

    # ----- the whole message -----

    def message_fields(self) -> dict:
        """``content`` (None when the reply is only tool calls), plus ``reasoning_content``
        when thinking is split out, plus ``tool_calls`` when there are some."""
        text = "".join(self.content)
        fields: dict = {"content": None if self.calls and not text else text}
        if self.spec.think is not None:
            fields["reasoning_content"] = "".join(self.reasoning) or None
        if self.calls:
            fields["tool_calls"] = [c.to_json() for c in self.calls]
        return fields

    # ----- internals -----

    def _apply(self, ev, out: list[dict]) -> None:
        match ev:
            case Run(state, text) if state == NORMAL:
                self._emit("content", self._content.push(text), out)
            case Run(state, text) if state == REASONING:
                self._emit("reasoning_content", self._thought.push(text), out)
            case Run(_, text):
                self._block.append(text)
            case Switch(old, new, marker):
                if old == TOOL and not self._close_block(out, marker):
                    return
                if new == TOOL:
                    self._block, self._opened_with = [], marker
                if new == REASONING:
                    self._thought.boundary()
                self._content.boundary()

    def _close_block(self, out: list[dict], end_marker: str | None = None) -> bool:
        """Parse the block that ``end_marker`` closes (None: the end of generation closes it).
        A marker after text that does not parse is taken as part of the block (a JSON string may
        hold "</tool_call>"); False then, and the block goes on."""
        assert self._machine is not None and self.spec.tools is not None  # only tools open blocks
        text = "".join(self._block)
        calls = parse_block(self.spec.tools, text, self.spec.tool_defs)
        if calls is None and end_marker is not None:
            self._machine.reject()
            self._block.append(end_marker)
            return False
        self._block = []
        if calls is None:  # not a call after all: keep what the model wrote
            self._emit("content", self._content.verbatim(self._opened_with + text), out)
            return True
        if self.spec.max_calls is not None:
            calls = calls[: max(self.spec.max_calls - len(self.calls), 0)]
        if calls:
            first = len(self.calls)
            self.calls.extend(calls)
            out.append({"tool_calls": [c.to_json(first + i) for i, c in enumerate(calls)]})
        return True

    def _emit(self, key: str, text: str, out: list[dict]) -> None:
        if not text:
            return
        (self.content if key == "content" else self.reasoning).append(text)
        if out and key in out[-1] and len(out[-1]) == 1:
            out[-1][key] += text
        else:
            out.append({key: text})
