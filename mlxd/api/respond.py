"""From a prompt to a reply: submit the job, then stream its events as SSE or collect them into
one JSON body (engine events -> API chunks -> SSE bytes, mlx-lm's layering). Every API's
handlers end here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlxd.api.errors import http_error
from mlxd.api.reply import Reply, ReplySpec
from mlxd.api.shapes import Choice, Shape, usage
from mlxd.engine.errors import EngineError
from mlxd.engine.events import Delta, Event, Failed, Finished
from mlxd.engine.loop import Job
from mlxd.engine.sampling import SamplingParams
from mlxd.engine.vision import VisionInput
from mlxd.transport import sse
from mlxd.transport.errors import HttpError

if TYPE_CHECKING:
    from mlxd.api.app import App


async def respond(
    app: App,
    ex,
    prompt: list[int],
    params: SamplingParams,
    shape: Shape,
    stream: bool,
    logprob_kind,
    reply: ReplySpec,
    prefix: str = "",
    vision: VisionInput | None = None,
) -> None:
    formatters = (
        [logprob_kind(app.token_text, len(prefix)) for _ in range(params.n)]
        if params.logprobs is not None
        else None
    )
    replies = [reply.new() for _ in range(params.n)]
    async with job_events(app, ex, prompt, params, vision) as flow:
        if stream:
            await _stream(ex, flow, shape, prefix, replies, formatters)
        else:
            await _collect(ex, flow, shape, prefix, replies, formatters)


@dataclass(frozen=True)
class Tick:
    """Among a job's events every ``tick_s`` seconds, for a route that asked (a stream that
    sends keep-alive pings while its job waits in the queue or prefills)."""


@contextlib.asynccontextmanager
async def job_events(
    app: App, ex, prompt: list[int], params: SamplingParams, vision: VisionInput | None = None
) -> AsyncIterator[AsyncIterator[Event]]:
    """Submit a job (429/503 raise here, before any byte is sent) and yield its events up to the
    last ``Finished`` or a ``Failed``, timed and counted; leaving the block cancels the job,
    whatever happened. Every API's handlers read their job through this."""
    async with _job(app, ex, prompt, params, vision, None) as events:
        yield events


@contextlib.asynccontextmanager
async def job_events_ticking(
    app: App,
    ex,
    prompt: list[int],
    params: SamplingParams,
    vision: VisionInput | None,
    tick_s: float,
) -> AsyncIterator[AsyncIterator[Event | Tick]]:
    """``job_events``, with a ``Tick`` among the events every ``tick_s`` seconds."""
    async with _job(app, ex, prompt, params, vision, tick_s) as events:
        yield events


@contextlib.asynccontextmanager
async def _job(
    app: App,
    ex,
    prompt: list[int],
    params: SamplingParams,
    vision: VisionInput | None,
    tick_s: float | None,
) -> AsyncIterator[AsyncIterator[Any]]:
    job, events = start_job(app, prompt, params, vision)
    timer = _arm_timeout(events, app.request_timeout)
    ticker = _Ticker(events, tick_s) if tick_s else None
    try:
        yield _observed(app, ex, _until_done(events, params.n))
    finally:
        job.cancel()
        if timer is not None:
            timer.cancel()
        if ticker is not None:
            ticker.cancel()


class _Ticker:
    """A ``Tick`` on a job's event queue every ``interval`` seconds: one timer, re-armed, so
    the events are still read with one plain ``get`` each (no per-event wait_for)."""

    def __init__(self, queue: asyncio.Queue, interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = queue
        self._interval = interval
        self._handle = self._loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        self._queue.put_nowait(Tick())
        self._handle = self._loop.call_later(self._interval, self._tick)

    def cancel(self) -> None:
        self._handle.cancel()


def start_job(
    app: App, prompt: list[int], params: SamplingParams, vision: VisionInput | None = None
):
    """Submit a job (``vision``: the images in its prompt); its events arrive on the returned
    asyncio queue."""
    events: asyncio.Queue[Event] = asyncio.Queue()
    job = Job(prompt, params, functools.partial(app.courier.send, events.put_nowait), vision)
    try:
        app.ready_engine.submit(job)
    except EngineError as exc:
        raise http_error(exc) from None
    return job, events


def _arm_timeout(events: asyncio.Queue, seconds: float | None) -> asyncio.TimerHandle | None:
    """--request-timeout: the whole request, queueing included, must end by then. One timer per
    request puts the failure in line with the job's events (no per-event wait_for)."""
    if seconds is None:
        return None
    failure = Failed(
        HttpError(
            504, "timeout", f"the request took longer than {seconds:g}s", code="request_timeout"
        )
    )
    return asyncio.get_running_loop().call_later(seconds, events.put_nowait, failure)


async def _until_done(events: asyncio.Queue, n: int) -> AsyncIterator[Event]:
    """A job's events up to its last ``Finished`` (one per choice) or its ``Failed``."""
    open_choices = n
    while open_choices:
        ev = await events.get()  # no suspension while events are already queued
        yield ev
        if isinstance(ev, Failed):
            return
        if isinstance(ev, Finished):
            open_choices -= 1


async def _observed(app: App, ex, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """Passes events through, timing the first token and counting tokens for the metrics."""
    first, finished = None, []
    async for ev in events:
        if first is None and isinstance(ev, Delta):
            first = time.monotonic()
        elif isinstance(ev, Finished):
            finished.append(ev)
        yield ev
    if finished:
        app.metrics.observe_generation(
            finished[0].prompt_tokens,
            sum(f.completion_tokens for f in finished),
            finished[0].cached_tokens,
            None if first is None else first - ex.started,
            None if first is None else time.monotonic() - first,
        )


def _usage(finished: list[Finished]) -> dict:
    first = finished[0]
    return usage(
        first.prompt_tokens, sum(f.completion_tokens for f in finished), first.cached_tokens
    )


async def _collect(
    ex, events: AsyncIterator[Event], shape: Shape, prefix: str, replies: list[Reply], formatters
) -> None:
    finished: dict[int, Finished] = {}
    async for ev in events:
        match ev:
            case Delta(index, text, logprobs):
                replies[index].feed(text)
                if formatters:
                    formatters[index].add(text, logprobs)
            case Finished():
                finished[ev.index] = ev
            case Failed(error):
                raise http_error(error)
    done = [finished[i] for i in range(len(replies))]
    use = _usage(done)
    ex.note_tokens(use["prompt_tokens"], use["completion_tokens"])
    choices = []
    for i, reply in enumerate(replies):
        _, reason = reply.finish(done[i].reason)
        message = reply.message_fields()
        if prefix:
            message["content"] = prefix + (message["content"] or "")
        choices.append(Choice(message, reason, formatters[i].whole() if formatters else None))
    await ex.send_json(200, shape.whole(choices, use))


async def _stream(
    ex, events: AsyncIterator[Event], shape: Shape, prefix: str, replies: list[Reply], formatters
) -> None:
    await ex.start_stream(sse.CONTENT_TYPE)
    for index in range(len(replies)):
        if (first := shape.first_chunk(index)) is not None:
            await ex.send_chunk(sse.event(first))
        if prefix:
            await ex.send_chunk(sse.event(shape.delta_chunk(index, {"content": prefix})))
    finished: list[Finished] = []
    async for ev in events:
        match ev:
            case Delta(index, text, logprobs):
                deltas = replies[index].feed(text)
                lp = formatters[index].piece(text, logprobs) if formatters and logprobs else None
                if lp is not None and not deltas:
                    deltas = [{"content": ""}]
                for j, delta in enumerate(deltas):  # the logprobs ride on the first piece
                    await ex.send_chunk(
                        sse.event(shape.delta_chunk(index, delta, lp if j == 0 else None))
                    )
            case Finished(index, reason):
                finished.append(ev)
                deltas, reason = replies[index].finish(reason)
                for delta in deltas:
                    await ex.send_chunk(sse.event(shape.delta_chunk(index, delta)))
                await ex.send_chunk(sse.event(shape.final_chunk(index, reason)))
            case Failed(error):
                # Headers are gone already: the error travels as a last event (OpenAI's shape).
                err = http_error(error)
                ex.note_error(err)
                await ex.send_chunk(sse.event(err.to_json()))
    if len(finished) == len(replies):
        use = _usage(sorted(finished, key=lambda f: f.index))
        ex.note_tokens(use["prompt_tokens"], use["completion_tokens"])
        if shape.include_usage:
            await ex.send_chunk(sse.event(shape.usage_chunk(use)))
    await ex.send_chunk(sse.DONE)
    await ex.end_stream()
