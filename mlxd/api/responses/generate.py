"""One Responses request on the engine: its items become a chat prompt (the chat plan decides
tools, thinking and constraints, as for chat completions), the job runs in the shared batch,
and its text becomes output items: whole, or as semantic events with sequence numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlxd.api.app import chat_prompt
from mlxd.api.chatplan import ChatPlan, plan_chat
from mlxd.api.errors import http_error
from mlxd.api.reply import Reply
from mlxd.api.respond import job_events
from mlxd.api.responses.items import to_messages
from mlxd.api.responses.output import Envelope, Output, usage
from mlxd.api.responses.request import ResponsesRequest
from mlxd.api.responses.store import Stored
from mlxd.api.schema import ChatRequest
from mlxd.engine.events import Delta, Event, Failed, Finished
from mlxd.engine.sampling import SamplingParams
from mlxd.engine.vision import VisionInput
from mlxd.transport import sse
from mlxd.transport.errors import HttpError, bad_request

if TYPE_CHECKING:
    from mlxd.api.app import App

# Chat's names for what the Responses API calls otherwise, in errors the chat plan raises.
RENAMED = (
    (re.compile(r"^messages"), "input"),
    (re.compile(r"^response_format"), "text.format"),
    (re.compile(r"^tools\[(\d+)\]\.function"), r"tools[\1]"),
    (re.compile(r"^max_tokens$"), "max_output_tokens"),
)
THINKING_SWITCH = "enable_thinking"  # the template variable Qwen 3 and others read


@dataclass(frozen=True)
class Prepared:
    context: tuple[dict, ...]  # every input item: the previous response's, then this input
    plan: ChatPlan
    prompt: list[int]
    vision: VisionInput | None = None  # the images of a vision model's prompt


async def prepare(app: App, req: ResponsesRequest) -> Prepared:
    """The prompt for ``req``: a previous response's items, then ``req.input``, rendered."""
    context = req.input
    if req.previous_response_id is not None:
        prev = app.responses.get(req.previous_response_id, "previous_response_id")
        context = prev.context + tuple(prev.response["output"]) + req.input
    messages = to_messages(req.instructions, context, len(context) - len(req.input))
    tokenizer = _tokenizer(app)
    with _chat_names():
        chat = ChatRequest(
            model=req.model,
            messages=messages,
            sampling=req.sampling,
            stream=req.stream,
            include_usage=False,
            response_format=req.text_format,
            tools=req.tools,
            tool_choice=req.tool_choice,
            parallel_tool_calls=req.parallel_tool_calls,
        )
        plan = plan_chat(chat, app.traits, app.defaults.reasoning_format)
        variables = _thinking(tokenizer, app.traits.think is not None, req.reasoning.effort)
        prompt, vision = await chat_prompt(app, chat, plan, variables)
    return Prepared(context, plan.after_render(tokenizer, prompt), prompt, vision)


def _tokenizer(app: App) -> Any:
    assert app.loaded is not None  # the handler's require_ready() came first
    return app.loaded.tokenizer


def _thinking(tokenizer, thinks: bool, effort: str | None) -> dict:
    """Effort "none" asks a thinking model's template not to think; any other effort leaves the
    model to think as it was trained (no budget is set)."""
    if effort != "none" or not thinks:
        return {}
    if THINKING_SWITCH not in str(getattr(tokenizer, "chat_template", "") or ""):
        raise bad_request(
            "this model thinks and its chat template has no switch to turn thinking off; "
            "send another reasoning effort",
            "reasoning.effort",
            "unsupported_parameter",
        )
    return {THINKING_SWITCH: False}


@contextlib.contextmanager
def _chat_names() -> Iterator[None]:
    """Errors raised by chat's planning name chat's fields: say the Responses API's instead."""
    try:
        yield
    except HttpError as err:
        if err.param is None:
            raise
        param, message = err.param, err.message
        for pattern, name in RENAMED:
            old, param = param, pattern.sub(name, param)
            if param != old:
                message = message.replace(f"'{old}'", f"'{param}'")
        raise dataclasses.replace(err, param=param, message=message) from None


async def sampling(app: App, req: ResponsesRequest, prepared: Prepared) -> SamplingParams:
    with _chat_names():
        params = app.sampling_params(
            req.sampling, len(prepared.prompt), "input", prepared.plan.stop
        )
    return await app.constrained(params, prepared.plan.enforce)


def envelope(app: App, req: ResponsesRequest, params: SamplingParams) -> Envelope:
    return Envelope(req, app.name, params.temperature, params.top_p, req.sampling.max_tokens)


# ----- running it -----


async def respond(app: App, ex, req: ResponsesRequest, prepared: Prepared) -> None:
    params = await sampling(app, req, prepared)
    env = envelope(app, req, params)
    run = _Run(app, env, prepared.plan.reply.new(), Output(req.include_reasoning))
    async with job_events(app, ex, prepared.prompt, params, prepared.vision) as events:
        if req.stream:
            await run.stream(ex, events)
        else:
            await ex.send_json(200, await run.collect(events))
    if run.final is not None:
        prompt_tokens, output_tokens = run.tokens
        ex.note_tokens(prompt_tokens, output_tokens)
        if req.store:
            app.responses.put(Stored.of(run.final, prepared.context))


class _Run:
    """One response being generated: its reply reader, its output items, and the end."""

    def __init__(self, app: App, env: Envelope, reply: Reply, output: Output) -> None:
        self.app, self.env, self.reply, self.output = app, env, reply, output
        self.final: dict | None = None  # the completed (or incomplete) response object
        self.tokens = (0, 0)

    async def collect(self, events: AsyncIterator[Event]) -> dict:
        async for ev in events:
            match ev:
                case Delta(_, text):
                    self.output.feed(self.reply.feed(text))
                case Finished():
                    self._finish(ev)
                case Failed(error):
                    raise http_error(error)
        assert self.final is not None
        return self.final

    async def stream(self, ex, events: AsyncIterator[Event]) -> None:
        seq = _Sequence(ex)
        await ex.start_stream(sse.CONTENT_TYPE)
        started = self.env.body("in_progress", [])
        await seq.send({"type": "response.created", "response": started})
        await seq.send({"type": "response.in_progress", "response": started})
        async for ev in events:
            match ev:
                case Delta(_, text):
                    await seq.send(*self.output.feed(self.reply.feed(text)))
                case Finished():
                    await seq.send(*self._finish(ev))
                    final = self.final
                    assert final is not None
                    await seq.send({"type": f"response.{final['status']}", "response": final})
                case Failed(error):
                    err = http_error(error)
                    ex.note_error(err)
                    await seq.send(*self._failure(err))
        await ex.end_stream()

    def _finish(self, ev: Finished) -> list[dict]:
        deltas, reason = self.reply.finish(ev.reason)
        events = self.output.feed(deltas) + self.output.finish(reason == "length")
        thought = self.output.reasoning
        encode = _tokenizer(self.app).encode
        reasoning_tokens = len(encode(thought, add_special_tokens=False)) if thought else 0
        use = usage(
            ev.prompt_tokens,
            ev.completion_tokens,
            ev.cached_tokens,
            min(reasoning_tokens, ev.completion_tokens),
        )
        incomplete = "max_output_tokens" if reason == "length" else None
        status = "incomplete" if incomplete else "completed"
        self.final = self.env.body(status, self.output.items, use, incomplete=incomplete)
        self.tokens = (ev.prompt_tokens, ev.completion_tokens)
        return events

    def _failure(self, error: HttpError) -> list[dict]:
        """A failure mid-stream: an ``error`` event, then ``response.failed`` (its items as
        far as they got)."""
        self.output.finish(incomplete=True)
        code = error.code or error.type
        failed = self.env.body(
            "failed", self.output.items, error={"code": code, "message": error.message}
        )
        return [
            {"type": "error", "code": code, "message": error.message, "param": error.param},
            {"type": "response.failed", "response": failed},
        ]


class _Sequence:
    """Numbers the events of one stream and sends them, each named by its type."""

    def __init__(self, ex) -> None:
        self.ex = ex
        self.number = 0

    async def send(self, *events: dict) -> None:
        if not events:
            return
        chunk = b""
        for ev in events:
            ev["sequence_number"] = self.number
            self.number += 1
            chunk += f"event: {ev['type']}\n".encode() + sse.event(ev)
        await self.ex.send_chunk(chunk)
