"""The OpenAI-compatible routes: validated request records in, engine jobs, responses out.

Handlers are ``async def handler(app, ex)``: ``app`` is the long-lived ``App``, ``ex`` the
``server.Exchange`` of one request (its parsed HTTP request and the means to answer it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from . import __version__, sse
from .engine import Delta, Engine, Event, Failed, Finished, Job, SamplingParams
from .errors import NOT_FOUND, UNAVAILABLE, HttpError, bad_request
from .models import LoadedModel
from .schema import ChatRequest, CompletionRequest, Sampling, context_error
from .shapes import ChatShape, Shape, TextShape, usage

log = logging.getLogger("mlxd.api")

NOT_READY_RETRY_AFTER_S = "5"


@dataclass(frozen=True)
class Defaults:
    """Server-side defaults for fields a request leaves out (CLI/config)."""
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0


@dataclass
class App:
    """What the handlers share. The server listens before the model is in: until ``loaded`` and
    ``engine`` are set and the engine has warmed up, model routes answer 503."""
    name: str                                  # the model id served in /v1/models
    defaults: Defaults = field(default_factory=Defaults)
    loaded: LoadedModel | None = None
    engine: Engine | None = None
    started: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready.is_set()

    def require_ready(self) -> None:
        if not self.ready:
            raise HttpError(503, UNAVAILABLE, "the model is still loading; retry shortly",
                            headers=(("Retry-After", NOT_READY_RETRY_AFTER_S),))

    def sampling_params(self, s: Sampling, prompt_tokens: int, prompt_param: str) -> SamplingParams:
        context = self.loaded.context_length
        if prompt_tokens >= context:
            raise context_error(prompt_tokens, s.max_tokens or 1, context, prompt_param)
        if s.max_tokens is not None and prompt_tokens + s.max_tokens > context:
            raise context_error(prompt_tokens, s.max_tokens, context, "max_tokens")
        max_tokens = s.max_tokens or min(self.defaults.max_tokens, context - prompt_tokens)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.defaults.temperature if s.temperature is None else s.temperature,
            top_p=self.defaults.top_p if s.top_p is None else s.top_p,
            stop=s.stop, seed=s.seed)


# ----- model-facing routes -----

async def chat_completions(app: App, ex) -> None:
    app.require_ready()
    req = ChatRequest.from_json(ex.request.body)
    prompt = await asyncio.to_thread(render_chat, app.loaded.tokenizer, req.messages)
    params = app.sampling_params(req.sampling, len(prompt), "messages")
    await _respond(app, ex, prompt, params, ChatShape(app.name, req.include_usage),
                   req.stream)


async def completions(app: App, ex) -> None:
    app.require_ready()
    req = CompletionRequest.from_json(ex.request.body)
    tokenizer = app.loaded.tokenizer
    if isinstance(req.prompt, str):
        prompt = await asyncio.to_thread(tokenizer.encode, req.prompt)
    else:
        prompt = list(req.prompt)
        vocab = app.engine.vocab_size
        if vocab is not None and max(prompt) >= vocab:
            raise bad_request(f"token id {max(prompt)} is outside the vocabulary (size {vocab})",
                              "prompt")
    if not prompt:
        raise bad_request("'prompt' encodes to no tokens", "prompt")
    params = app.sampling_params(req.sampling, len(prompt), "prompt")
    echo = (req.prompt if isinstance(req.prompt, str) else tokenizer.decode(prompt)) if req.echo else ""
    await _respond(app, ex, prompt, params, TextShape(app.name, req.include_usage),
                   req.stream, prefix=echo)


def render_chat(tokenizer, messages: tuple[dict, ...]) -> list[int]:
    if not getattr(tokenizer, "has_chat_template", False):
        raise bad_request("this model has no chat template; use /v1/completions", "messages")
    try:
        return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True))
    except Exception as exc:  # the template's own raise_exception(), or a jinja error
        raise bad_request(f"the model's chat template rejected these messages: {exc}",
                          "messages") from None


async def _respond(app: App, ex, prompt: list[int], params: SamplingParams, shape: Shape,
                   stream: bool, prefix: str = "") -> None:
    events = run_job(app.engine, prompt, params)
    if stream:
        await _stream(ex, events, shape, prefix)
    else:
        await _collect(ex, events, shape, prefix)


async def run_job(engine: Engine, prompt: list[int], params: SamplingParams) -> AsyncIterator[Event]:
    """Submit a job and yield its events; leaving early (or being cancelled) cancels the job."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def emit(ev: Event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, ev)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    job = Job(prompt, params, emit)
    engine.submit(job)
    try:
        while True:
            ev = await events.get()
            yield ev
            if not isinstance(ev, Delta):
                return
    finally:
        job.cancel()


async def _collect(ex, events: AsyncIterator[Event], shape: Shape, prefix: str) -> None:
    parts = [prefix]
    async for ev in events:
        match ev:
            case Delta(text):
                parts.append(text)
            case Finished(reason, prompt_tokens, completion_tokens):
                ex.note_tokens(prompt_tokens, completion_tokens)
                await ex.send_json(200, shape.whole("".join(parts), reason,
                                                    usage(prompt_tokens, completion_tokens)))
            case Failed(error):
                raise error


async def _stream(ex, events: AsyncIterator[Event], shape: Shape, prefix: str) -> None:
    await ex.start_stream(sse.CONTENT_TYPE)
    first = shape.first_chunk()
    if first is not None:
        await ex.send_chunk(sse.event(first))
    if prefix:
        await ex.send_chunk(sse.event(shape.delta_chunk(prefix)))
    async for ev in events:
        match ev:
            case Delta(text):
                if text:
                    await ex.send_chunk(sse.event(shape.delta_chunk(text)))
            case Finished(reason, prompt_tokens, completion_tokens):
                ex.note_tokens(prompt_tokens, completion_tokens)
                await ex.send_chunk(sse.event(shape.final_chunk(reason)))
                if shape.include_usage:
                    await ex.send_chunk(sse.event(shape.usage_chunk(
                        usage(prompt_tokens, completion_tokens))))
            case Failed(error):
                # Headers are gone already: the error travels as a last event (OpenAI's shape).
                ex.note_error(error)
                await ex.send_chunk(sse.event(error.to_json()))
    await ex.send_chunk(sse.DONE)
    await ex.end_stream()


# ----- operational routes -----

def model_card(app: App) -> dict:
    return {"id": app.name, "object": "model", "created": int(app.started),
            "owned_by": "mlxd"}


async def list_models(app: App, ex) -> None:
    await ex.send_json(200, {"object": "list", "data": [model_card(app)]})


async def get_model(app: App, ex) -> None:
    model_id = ex.path_param
    if model_id != app.name:
        raise HttpError(404, NOT_FOUND, f"The model '{model_id}' does not exist",
                        param="model", code="model_not_found")
    await ex.send_json(200, model_card(app))


async def health(app: App, ex) -> None:
    body = {"status": "ok" if app.ready else "loading", "model": app.name,
            "version": __version__}
    headers = () if app.ready else (("Retry-After", NOT_READY_RETRY_AFTER_S),)
    await ex.send_json(200 if app.ready else 503, body, headers)


# (method, path) -> handler. A path ending in "/" is a prefix whose rest is ``ex.path_param``.
ROUTES = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("GET", "/v1/models"): list_models,
    ("GET", "/v1/models/"): get_model,
    ("GET", "/health"): health,
}
