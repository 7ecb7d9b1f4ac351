"""The OpenAI-compatible routes: validated request records in, engine jobs, responses out.

Handlers are ``async def handler(app, ex)``: ``app`` is the long-lived ``App``, ``ex`` the
``server.Exchange`` of one request (its parsed HTTP request and the means to answer it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mlxd import __version__
from mlxd.api.chatplan import ChatPlan, ModelTraits, plan_chat
from mlxd.api.errors import http_error
from mlxd.api.logprobs import ChatLogprobs, TextLogprobs
from mlxd.api.reply import Reply, ReplySpec
from mlxd.api.schema import ChatRequest, CompletionRequest, Sampling, context_error
from mlxd.api.shapes import ChatShape, Choice, Shape, TextShape, usage
from mlxd.api.status import gauges, queue_state, status_report
from mlxd.constrain.enforce import Enforce, processor
from mlxd.constrain.index import TokenVocabulary
from mlxd.engine.errors import EngineDead, EngineError, out_of_vocabulary, vocabulary_error
from mlxd.engine.events import Courier, Delta, Event, Failed, Finished
from mlxd.engine.loop import Engine, Job
from mlxd.engine.sampling import SamplingParams
from mlxd.models.loader import LoadedModel
from mlxd.service.config import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_REASONING_FORMAT,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)
from mlxd.transport import sse
from mlxd.transport.errors import NOT_FOUND, UNAVAILABLE, HttpError, bad_request
from mlxd.transport.metrics import CONTENT_TYPE as METRICS_TYPE
from mlxd.transport.metrics import Metrics

log = logging.getLogger("mlxd.api")

NOT_READY_RETRY_AFTER_S = "5"


@dataclass(frozen=True)
class Defaults:
    """Server-side defaults for fields a request leaves out (CLI/config)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    reasoning_format: str = DEFAULT_REASONING_FORMAT  # "none": leave thinking in content


@dataclass
class App:
    """What the handlers share. The server listens before the model is in: until ``loaded`` and
    ``engine`` are set and the engine has warmed up, model routes answer 503."""

    name: str  # the model id served in /v1/models
    defaults: Defaults = field(default_factory=Defaults)
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    request_timeout: float | None = None
    metrics: Metrics = field(default_factory=Metrics)
    parameter_count: int | None = None  # computed on the first /v1/mlx/status
    started: float = field(default_factory=time.time)
    _token_texts: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready.is_set() and not self.failure

    @property
    def failure(self) -> str | None:
        """Why the generation thread died, once it has: the process only answers 503 now."""
        return None if self.engine is None else self.engine.failure

    def require_ready(self) -> None:
        if self.failure:
            raise http_error(EngineDead(f"the generation thread died: {self.failure}"))
        if not self.ready:
            raise HttpError(
                503,
                UNAVAILABLE,
                "the model is still loading; retry shortly",
                headers=(("Retry-After", NOT_READY_RETRY_AFTER_S),),
            )

    def check_token_ids(self, ids, param: str) -> None:
        vocab = self.engine.vocab_size
        bad = out_of_vocabulary(ids, vocab)
        if bad is not None:
            raise http_error(vocabulary_error(bad, vocab, param))

    def token_text(self, token: int) -> str:
        """One token as text, for logprobs (memoised: the same ids come back all the time)."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = self.loaded.tokenizer.decode([token])
        return text

    @functools.cached_property
    def courier(self) -> Courier:
        """Carries engine events to the loop serving this app (made on first use, on it)."""
        return Courier(asyncio.get_running_loop())

    @functools.cached_property
    def traits(self) -> ModelTraits:
        return ModelTraits.of(self.loaded.tokenizer)

    async def constrained(self, params: SamplingParams, enforce: Enforce | None) -> SamplingParams:
        """``params`` with a factory of fresh constraint processors (one per choice, made on the
        generation thread), when there is something to enforce."""
        if enforce is None:
            return params
        tokenizer = self.loaded.tokenizer
        # Built once per tokenizer (about 0.1 s at a 49k vocabulary), then cached.
        vocab = await asyncio.to_thread(TokenVocabulary.for_tokenizer, tokenizer)
        make = functools.partial(
            processor, enforce, vocab, tuple(sorted(tokenizer.eos_token_ids)), params.max_tokens
        )
        return dataclasses.replace(params, constraint=make)

    def sampling_params(
        self, s: Sampling, prompt_tokens: int, prompt_param: str, extra_stop: tuple[str, ...] = ()
    ) -> SamplingParams:
        context = self.loaded.context_length
        if prompt_tokens >= context:
            raise context_error(prompt_tokens, s.max_tokens or 1, context, prompt_param)
        if s.max_tokens is not None and prompt_tokens + s.max_tokens > context:
            raise context_error(prompt_tokens, s.max_tokens, context, "max_tokens")
        max_tokens = s.max_tokens or min(self.defaults.max_tokens, context - prompt_tokens)
        self.check_token_ids([t for t, _ in s.logit_bias], "logit_bias")
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.defaults.temperature if s.temperature is None else s.temperature,
            top_p=self.defaults.top_p if s.top_p is None else s.top_p,
            stop=s.stop + extra_stop,
            seed=s.seed,
            n=s.n,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            logit_bias=dict(s.logit_bias),
            logprobs=s.logprobs,
            top_k=s.top_k,
            min_p=s.min_p,
            repetition_penalty=s.repetition_penalty,
        )


# ----- model-facing routes -----


async def chat_completions(app: App, ex) -> None:
    app.require_ready()
    req = ChatRequest.from_json(ex.request.body)
    tokenizer = app.loaded.tokenizer
    plan: ChatPlan = plan_chat(req, app.traits, app.defaults.reasoning_format)
    prompt = await asyncio.to_thread(render_chat, tokenizer, req.messages, plan.template_tools)
    plan = plan.after_render(tokenizer, prompt)
    params = await app.constrained(
        app.sampling_params(req.sampling, len(prompt), "messages", plan.stop), plan.enforce
    )
    await _respond(
        app,
        ex,
        prompt,
        params,
        ChatShape(app.name, req.include_usage),
        req.stream,
        ChatLogprobs,
        plan.reply,
    )


async def completions(app: App, ex) -> None:
    app.require_ready()
    req = CompletionRequest.from_json(ex.request.body)
    tokenizer = app.loaded.tokenizer
    if isinstance(req.prompt, str):
        prompt = await asyncio.to_thread(tokenizer.encode, req.prompt)
    else:
        prompt = list(req.prompt)
        app.check_token_ids(prompt, "prompt")
    if not prompt:
        raise bad_request("'prompt' encodes to no tokens", "prompt")
    enforce = Enforce(req.response_format.grammar) if req.response_format else None
    params = await app.constrained(
        app.sampling_params(req.sampling, len(prompt), "prompt"), enforce
    )
    echo = (
        (req.prompt if isinstance(req.prompt, str) else tokenizer.decode(prompt))
        if req.echo
        else ""
    )
    await _respond(
        app,
        ex,
        prompt,
        params,
        TextShape(app.name, req.include_usage),
        req.stream,
        TextLogprobs,
        ReplySpec(),
        prefix=echo,
    )


def render_chat(tokenizer, messages: tuple[dict, ...], tools: list | None = None) -> list[int]:
    if not getattr(tokenizer, "has_chat_template", False):
        raise bad_request("this model has no chat template; use /v1/completions", "messages")
    extra = {"tools": tools} if tools else {}
    try:
        return list(
            tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, **extra)
        )
    except Exception as exc:  # the template's own raise_exception(), or a jinja error
        raise bad_request(
            f"the model's chat template rejected these messages: {exc}", "messages"
        ) from None


async def _respond(
    app: App,
    ex,
    prompt: list[int],
    params: SamplingParams,
    shape: Shape,
    stream: bool,
    logprob_kind,
    reply: ReplySpec,
    prefix: str = "",
) -> None:
    job, events = start_job(app, prompt, params)  # raises 429/503 before any byte is sent
    formatters = (
        [logprob_kind(app.token_text, len(prefix)) for _ in range(params.n)]
        if params.logprobs is not None
        else None
    )
    replies = [reply.new() for _ in range(params.n)]
    timer = _arm_timeout(events, app.request_timeout)
    try:
        flow = _observed(app, ex, _until_done(events, params.n))
        if stream:
            await _stream(ex, flow, shape, prefix, replies, formatters)
        else:
            await _collect(ex, flow, shape, prefix, replies, formatters)
    finally:
        job.cancel()
        if timer is not None:
            timer.cancel()


def start_job(app: App, prompt: list[int], params: SamplingParams):
    """Submit a job; its events arrive on the returned asyncio queue."""
    events: asyncio.Queue[Event] = asyncio.Queue()
    job = Job(prompt, params, functools.partial(app.courier.send, events.put_nowait))
    try:
        app.engine.submit(job)
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


# ----- operational routes -----


def model_card(app: App) -> dict:
    card = {"id": app.name, "object": "model", "created": int(app.started), "owned_by": "mlxd"}
    if app.loaded is not None and app.loaded.adapter is not None:
        card["adapter"] = app.loaded.adapter
    return card


async def list_models(app: App, ex) -> None:
    await ex.send_json(200, {"object": "list", "data": [model_card(app)]})


async def get_model(app: App, ex) -> None:
    model_id = ex.path_param
    if model_id != app.name:
        raise HttpError(
            404,
            NOT_FOUND,
            f"The model '{model_id}' does not exist",
            param="model",
            code="model_not_found",
        )
    await ex.send_json(200, model_card(app))


async def health(app: App, ex) -> None:
    body = {"status": "ok" if app.ready else "loading", "model": app.name, "version": __version__}
    headers: tuple[tuple[str, str], ...] = ()
    if app.failure:  # no Retry-After: this process will not recover, its supervisor restarts it
        body.update(status="failed", reason=app.failure)
    elif not app.ready:
        headers = (("Retry-After", NOT_READY_RETRY_AFTER_S),)
    await ex.send_json(200 if app.ready else 503, body, headers)


async def status(app: App, ex) -> None:
    await ex.send_json(200, status_report(app))


async def stats(app: App, ex) -> None:
    await ex.send_json(200, {**app.metrics.stats(), **queue_state(app)})


async def metrics(app: App, ex) -> None:
    await ex.send(200, app.metrics.exposition(gauges(app)).encode(), METRICS_TYPE)


# (method, path) -> handler. A path ending in "/" is a prefix whose rest is ``ex.path_param``.
ROUTES = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("GET", "/v1/models"): list_models,
    ("GET", "/v1/models/"): get_model,
    ("GET", "/v1/mlx/status"): status,
    ("GET", "/health"): health,
    ("GET", "/stats"): stats,
    ("GET", "/metrics"): metrics,
}
# Answered without an API key unless --auth-health (probes and scrapers rarely carry one).
PUBLIC_PATHS = frozenset({"/health", "/metrics"})
