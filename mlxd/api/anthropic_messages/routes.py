"""The Anthropic routes: ``POST /v1/messages`` (whole or streamed) and ``/v1/messages/count_tokens``.

A request runs exactly as a chat request does (chat plan, template, constrained decoding, the
same engine batch); only the reading of its reply into blocks and the bytes differ. A stream is
Anthropic's event sequence: ``message_start``, then per block ``content_block_start`` /
``content_block_delta`` / ``content_block_stop``, then ``message_delta`` and ``message_stop``;
``ping`` right after the start and whenever nothing else was sent for ``PING_INTERVAL_S`` (while
queued, prefilling, or holding back a tool call); a failure is an ``error`` event that ends it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator

from mlxd.api.anthropic_messages.body import EXAMPLE_MESSAGE
from mlxd.api.anthropic_messages.errors import ANTHROPIC_STYLE
from mlxd.api.anthropic_messages.message import Event, MessageBuilder
from mlxd.api.anthropic_messages.request import CountTokensRequest, MessagesRequest
from mlxd.api.app import chat_prompt
from mlxd.api.chatplan import plan_chat
from mlxd.api.errors import http_error
from mlxd.api.fields import Sampling
from mlxd.api.openapi import operation
from mlxd.api.respond import Tick, job_events, job_events_ticking
from mlxd.engine import events as engine
from mlxd.engine.events import Delta, Failed, Finished
from mlxd.transport import sse
from mlxd.transport.errors import HttpError

# A ping after this long without another event keeps proxies with idle timeouts (often 30-60 s)
# from cutting a stream that waits in the queue or in a long prefill.
PING_INTERVAL_S = 10.0
PING: Event = ("ping", {"type": "ping"})

# The chat path's names for fields an Anthropic body spells otherwise: its errors name the
# field as the client wrote it.
PARAM_NAMES = (
    (re.compile(r"^tools\[(\d+)\]\.function\.parameters"), r"tools[\1].input_schema"),
    (re.compile(r"^tools\[(\d+)\]\.function\."), r"tools[\1]."),
    (re.compile(r"^response_format"), "output_config.format"),
)


@operation(
    "Create a message (Anthropic Messages API)",
    body=MessagesRequest,
    streams=True,
    errors="anthropic",
    example=EXAMPLE_MESSAGE,
    doc="Runs in the same continuous batch as chat requests. With `stream: true`, Anthropic's "
    "events (`message_start` ... `message_stop`, and `ping`). Errors take Anthropic's shape; "
    "the key may come as `x-api-key`.",
)
async def create_message(app, ex) -> None:
    app.require_ready()
    req = MessagesRequest.from_json(ex.request.body)
    prompt, vision, plan = await _render(app, req)
    sampling, clamped = _within_context(req.chat.sampling, len(prompt), app.model.context_length)
    params = await app.constrained(
        app.sampling_params(sampling, len(prompt), "messages", plan.stop), plan.enforce
    )
    message = MessageBuilder(
        app.name,
        plan.reply.new(),
        len(prompt),
        req.stop_sequences,
        req.thinking.shown,
        length_reason="model_context_window_exceeded" if clamped else "max_tokens",
    )
    if req.stream:
        # PING_INTERVAL_S is read here, at each request (the tests shorten it).
        async with job_events_ticking(app, ex, prompt, params, vision, PING_INTERVAL_S) as flow:
            await _stream(ex, flow, message)
    else:
        async with job_events(app, ex, prompt, params, vision) as events:
            await _collect(ex, events, message)


@operation(
    "Count a message's input tokens (Anthropic)",
    body=CountTokensRequest,
    errors="anthropic",
    doc="The prompt POST /v1/messages would run on for the same fields: system, tools and "
    "template included.",
)
async def count_tokens(app, ex) -> None:
    app.require_ready()
    req = CountTokensRequest.from_json(ex.request.body)
    prompt, _vision, _plan = await _render(app, req)
    await ex.send_json(200, {"input_tokens": len(prompt)})


def _within_context(sampling: Sampling, prompt_tokens: int, context: int) -> tuple[Sampling, bool]:
    """Anthropic takes a max_tokens past the room the prompt leaves and stops at the end of the
    context (stop_reason "model_context_window_exceeded"); Claude Code asks 32000 whatever the
    model. Chat refuses that; here max_tokens is cut to the room, and True says it was."""
    room = context - prompt_tokens
    if sampling.max_tokens is None or room <= 0 or sampling.max_tokens <= room:
        return sampling, False  # a prompt that fills the context is refused as chat refuses it
    return dataclasses.replace(sampling, max_tokens=room), True


async def _render(app, req: MessagesRequest):
    """(prompt ids, VisionInput or None, the chat plan settled on the prompt), as chat makes
    them: a VLM's images through its processor, a text model's template, the same refusals."""
    try:
        plan = plan_chat(req.chat, app.traits, app.defaults.reasoning_format)
        prompt, vision = await chat_prompt(app, req.chat, plan, req.template_variables)
    except HttpError as err:
        raise _renamed(err) from None
    return prompt, vision, plan.after_render(app.model.tokenizer, prompt)


def _renamed(err: HttpError) -> HttpError:
    if err.param is None:
        return err
    for pattern, name in PARAM_NAMES:
        param = pattern.sub(name, err.param)
        if param != err.param:
            message = err.message.replace(err.param, param)
            return dataclasses.replace(err, param=param, message=message)
    return err


async def _collect(ex, events: AsyncIterator[engine.Event], message: MessageBuilder) -> None:
    async for ev in events:
        match ev:
            case Delta(_, text):
                message.feed(text)
            case Finished():
                message.finish(ev)
            case Failed(error):
                raise http_error(error)
    _note_tokens(ex, message)
    await ex.send_json(200, message.whole())


async def _stream(ex, events: AsyncIterator[engine.Event | Tick], message: MessageBuilder) -> None:
    await ex.start_stream(sse.CONTENT_TYPE)
    await _send(ex, [message.start(), PING])
    quiet = True  # nothing sent since the last tick: the next one pings
    async for ev in events:
        out: list[Event] = []
        match ev:
            case Tick():
                if quiet:
                    await _send(ex, [PING])
                quiet = True
            case Delta(_, text):
                out = message.feed(text)
            case Finished():
                out = message.finish(ev)
                _note_tokens(ex, message)
            case Failed(error):  # the job's last event
                # The status line went out long ago: the error is the stream's last event.
                err = http_error(error)
                ex.note_error(err)
                await ex.send_chunk(ANTHROPIC_STYLE.stream_end(err))
        if out:
            quiet = False
            await _send(ex, out)
    await ex.end_stream()


async def _send(ex, events: list[Event]) -> None:
    await ex.send_chunk(b"".join(sse.named_event(name, data) for name, data in events))


def _note_tokens(ex, message: MessageBuilder) -> None:
    use = message.usage
    prompt = use["input_tokens"] + use["cache_read_input_tokens"]
    ex.note_tokens(prompt, use["output_tokens"])
