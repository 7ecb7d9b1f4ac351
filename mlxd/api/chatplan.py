"""What a chat request asks beyond sampling, decided once per request: which tools reach the chat
template, how each choice's text is read back (thinking, tool calls), and what the constrained
decoder must enforce (``response_format``; ``tool_choice`` "required" or a named function; the
arguments of ``strict`` tools).

Every refusal here is a 400 naming the field that cannot be honoured with this model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlxd.api.reasoning import ThinkMarkers, opens_thinking, splits, think_markers
from mlxd.api.reply import ReplySpec
from mlxd.api.schema import ChatRequest, compile_grammar
from mlxd.api.toolcalls import (
    EMPTY_PARAMETERS,
    ToolFormat,
    check_support,
    forced_call,
    template_takes_tools,
    tool_format,
)
from mlxd.constrain.enforce import Enforce
from mlxd.constrain.json_schema import SchemaError, compile_schema
from mlxd.transport.errors import bad_request

ANY_OBJECT = {"type": "object"}  # the arguments of a non-strict tool outside the subset


@dataclass(frozen=True)
class ModelTraits:
    """What the loaded model's tokenizer and template allow; computed once per model."""

    takes_tools: bool
    tool_format: ToolFormat | None
    think: ThinkMarkers | None
    call_opener: tuple[int, ...] = ()  # the tokens of the call format's opening marker

    @classmethod
    def of(cls, tokenizer) -> ModelTraits:
        fmt = tool_format(tokenizer)
        opener = tuple(tokenizer.encode(fmt.start, add_special_tokens=False)) if fmt else ()
        return cls(template_takes_tools(tokenizer), fmt, think_markers(tokenizer), opener)


@dataclass(frozen=True)
class ChatPlan:
    template_tools: list | None  # the tools the template renders (None: none)
    reply: ReplySpec
    stop: tuple[str, ...] = ()  # stop strings added to the request's own
    enforce: Enforce | None = None

    def after_render(self, tokenizer, prompt: list[int]) -> ChatPlan:
        """Settle what depends on the rendered prompt: does the reply start inside thinking? A
        whole-reply constraint then first closes the block, so that what it checks is the
        answer, and the thinking split stays on to take that close off the content."""
        think = self.reply.think
        if think is None or not opens_thinking(tokenizer, prompt):
            return self
        enforce = self.enforce
        if enforce is not None and not enforce.trigger:
            enforce = replace(enforce, prefix=think.end + "\n\n" + enforce.prefix)
        return replace(self, reply=replace(self.reply, starts_thinking=True), enforce=enforce)


def plan_chat(req: ChatRequest, traits: ModelTraits, reasoning_format: str) -> ChatPlan:
    split = splits(req.reasoning_format or reasoning_format, traits.think)
    think = traits.think if split else None
    if (
        any(m["role"] == "tool" or "tool_calls" in m for m in req.messages)
        and not traits.takes_tools
    ):
        raise bad_request(
            "these messages hold tool calls or results, but this model's chat "
            "template has no tool support",
            "messages",
            "unsupported_parameter",
        )
    choice = req.tool_choice
    if choice.mode == "none":  # the template hears of no tools; nothing is parsed as a call
        enforce = Enforce(req.response_format.grammar) if req.response_format else None
        return ChatPlan(
            None, ReplySpec(think=think or (traits.think if enforce else None)), enforce=enforce
        )
    fmt = check_support(traits.takes_tools, traits.tool_format, "tools")
    if req.response_format is not None:
        raise bad_request(
            "'response_format' cannot be combined with tool calls; send "
            "tool_choice 'none' to use both tools and a response format",
            "response_format",
            "unsupported_parameter",
        )
    tools = list(req.tools)
    spec = ReplySpec(
        think=think, tools=fmt, tool_defs=tools, max_calls=None if req.parallel_tool_calls else 1
    )
    # parallel_tool_calls false: the first closed call block ends the generation (a forced
    # call ends it anyway: the constraint allows one).
    stop = (fmt.end,) if not req.parallel_tool_calls and fmt.end and not choice.forced else ()
    enforce = None
    if choice.forced:
        chosen = [
            t for t in tools if choice.mode == "required" or t["function"]["name"] == choice.name
        ]
        asked = (
            f"tool_choice {choice.mode!r}" if choice.mode == "required" else "a named tool_choice"
        )
        forced = forced_call(fmt, _grammar_tools(chosen, tools), "tool_choice", asked)
        enforce = Enforce(compile_grammar(forced.schema, "tools"), forced.prefix, forced.suffix)
        spec = replace(spec, think=spec.think or traits.think)
    elif any(t["function"].get("strict") for t in tools):
        forced = forced_call(
            fmt, _grammar_tools(tools, tools), "tools", "'strict': true under tool_choice 'auto'"
        )
        enforce = Enforce(
            compile_grammar(forced.schema, "tools"),
            forced.prefix.removeprefix(fmt.start),
            forced.suffix,
            trigger=traits.call_opener,
        )
    return ChatPlan(tools, spec, stop, enforce)


def _grammar_tools(chosen: list[dict], tools: list[dict]) -> list[dict]:
    """The tools as the call grammar sees them: a strict tool's parameters must be in the
    supported schema subset (else a 400 naming them); another tool's that are not become any
    JSON object, as OpenAI promises nothing about non-strict arguments."""
    out = []
    for tool in chosen:
        function = tool["function"]
        params = function.get("parameters") or EMPTY_PARAMETERS
        try:
            compile_schema(params)
        except SchemaError as exc:
            if function.get("strict"):
                i = tools.index(tool)
                raise bad_request(
                    f"tools[{i}].function.parameters: {exc}",
                    f"tools[{i}].function.parameters",
                    "unsupported_schema",
                ) from None
            params = ANY_OBJECT
        out.append({**tool, "function": {**function, "parameters": params}})
    return out
