"""The OpenAI-compatible routes: validated request records in, engine jobs, responses out.

Handlers are ``async def handler(app, ex)``: ``app`` is the long-lived ``App``, ``ex`` the
``exchange.Exchange`` of one request (its parsed HTTP request and the means to answer it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from dataclasses import dataclass, field

from mlx_lm.utils import get_total_parameters

from mlxd.api import visionchat
from mlxd.api.chatplan import ChatPlan, ModelTraits, plan_chat
from mlxd.api.errors import http_error
from mlxd.api.images import ImageLimits
from mlxd.api.logprobs import ChatLogprobs, TextLogprobs
from mlxd.api.messages import image_refs
from mlxd.api.openapi import operation
from mlxd.api.reply import ReplySpec
from mlxd.api.respond import respond
from mlxd.api.responses.store import ResponseStore
from mlxd.api.schema import ChatRequest, CompletionRequest, Sampling, context_error
from mlxd.api.shapes import ChatShape, TextShape
from mlxd.constrain.enforce import Enforce, ProcessorFactory
from mlxd.constrain.index import TokenVocabulary
from mlxd.engine.errors import EngineDead, out_of_vocabulary, vocabulary_error
from mlxd.engine.events import Courier
from mlxd.engine.group import Lockstep
from mlxd.engine.loop import Engine
from mlxd.engine.sampling import SamplingParams
from mlxd.models.loader import LoadedModel
from mlxd.service.config import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_REASONING_FORMAT,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)
from mlxd.transport.errors import UNAVAILABLE, HttpError, bad_request
from mlxd.transport.metrics import Metrics

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
    group: Lockstep | None = None  # this server is rank 0 of a group (engine/group.py)
    request_timeout: float | None = None
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.time)
    responses: ResponseStore = field(default_factory=lambda: ResponseStore(0))  # run.py sizes it
    unloaded: bool = False  # --idle-unload dropped the model; the next request loads it
    _token_texts: dict = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready.is_set() and not self.failure

    @property
    def failure(self) -> str | None:
        """Why the generation thread died, once it has: the process only answers 503 now."""
        return None if self.engine is None else self.engine.failure

    @property
    def state(self) -> str:
        """ready, loading, unloaded or failed (for /health, the PID file, /v1/queue/stats)."""
        if self.unloaded:
            return "unloaded"
        if self.failure:
            return "failed"
        return "ready" if self.ready else "loading"

    def forget_model(self) -> None:
        """Drop what was derived from the model (its memory should go with it)."""
        self._token_texts.clear()
        self.__dict__.pop("traits", None)  # the cached_property's value

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

    @property
    def model(self) -> LoadedModel:
        """The loaded model; model routes reach it after ``require_ready()``."""
        assert self.loaded is not None, "require_ready() first"
        return self.loaded

    @property
    def ready_engine(self) -> Engine:
        """The engine; model routes reach it after ``require_ready()``."""
        assert self.engine is not None, "require_ready() first"
        return self.engine

    def check_token_ids(self, ids, param: str) -> None:
        vocab = self.ready_engine.vocab_size
        bad = out_of_vocabulary(ids, vocab)
        if bad is not None:
            raise http_error(vocabulary_error(bad, vocab, param))

    def token_text(self, token: int) -> str:
        """One token as text, for logprobs (memoised: the same ids come back all the time)."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = self.model.tokenizer.decode([token])
        return text

    @functools.cached_property
    def courier(self) -> Courier:
        """Carries engine events to the loop serving this app (made on first use, on it)."""
        return Courier(asyncio.get_running_loop())

    @functools.cached_property
    def parameter_count(self) -> int:
        """The model's parameters: a walk over every weight, so counted on first use, then kept."""
        return int(get_total_parameters(self.model.model))

    @functools.cached_property
    def traits(self) -> ModelTraits:
        return ModelTraits.of(self.model.tokenizer)

    async def constrained(self, params: SamplingParams, enforce: Enforce | None) -> SamplingParams:
        """``params`` with a factory of fresh constraint processors (one per choice, made on the
        generation thread), when there is something to enforce."""
        if enforce is None:
            return params
        tokenizer = self.model.tokenizer
        # Built once per tokenizer (about 0.1 s at a 49k vocabulary), then cached.
        vocab = await asyncio.to_thread(TokenVocabulary.for_tokenizer, tokenizer)
        make = ProcessorFactory(
            enforce, tuple(sorted(tokenizer.eos_token_ids)), params.max_tokens, vocab
        )
        return dataclasses.replace(params, constraint=make)

    def sampling_params(
        self, s: Sampling, prompt_tokens: int, prompt_param: str, extra_stop: tuple[str, ...] = ()
    ) -> SamplingParams:
        context = self.model.context_length
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


@operation("Create a chat completion", body=ChatRequest, streams=True, example={"max_tokens": 40})
async def chat_completions(app: App, ex) -> None:
    app.require_ready()
    req = ChatRequest.from_json(ex.request.body)
    tokenizer = app.model.tokenizer
    plan: ChatPlan = plan_chat(req, app.traits, app.defaults.reasoning_format)
    prompt, vision = await chat_prompt(app, req, plan)
    plan = plan.after_render(tokenizer, prompt)
    params = await app.constrained(
        app.sampling_params(req.sampling, len(prompt), "messages", plan.stop), plan.enforce
    )
    await respond(
        app,
        ex,
        prompt,
        params,
        ChatShape(app.name, req.include_usage),
        req.stream,
        ChatLogprobs,
        plan.reply,
        vision=vision,
    )


async def chat_prompt(app: App, req: ChatRequest, plan: ChatPlan, extra: dict | None = None):
    """(prompt ids, VisionInput or None): a VLM's prompt goes through its processor with the
    images; a text model's through its template, and an image part is a 400. ``extra``: more
    template variables (``enable_thinking``)."""
    loaded = app.loaded
    assert loaded is not None  # require_ready() passed
    refs, vision, tokenizer = image_refs(req.messages), loaded.vision, loaded.tokenizer
    if vision is None:
        visionchat.refuse_without_vision(refs, app.name)
        prompt = await asyncio.to_thread(
            render_chat, tokenizer, req.messages, plan.template_tools, extra
        )
        return prompt, None
    return await asyncio.to_thread(
        visionchat.prepare,
        vision,
        tokenizer,
        req.messages,
        plan.template_tools,
        refs,
        app.image_limits,
        extra,
    )


@operation(
    "Create a text completion", body=CompletionRequest, streams=True, example={"max_tokens": 30}
)
async def completions(app: App, ex) -> None:
    app.require_ready()
    req = CompletionRequest.from_json(ex.request.body)
    tokenizer = app.model.tokenizer
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
    await respond(
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


def render_chat(
    tokenizer, messages: tuple[dict, ...], tools: list | None = None, extra: dict | None = None
) -> list[int]:
    """The prompt's token ids; ``extra``: more template variables (``enable_thinking``; a
    prefill turns ``add_generation_prompt`` off and ``continue_final_message`` on)."""
    return list(_apply_template(tokenizer, messages, tools, extra or {}))


def chat_text(
    tokenizer, messages: tuple[dict, ...], tools: list | None = None, extra: dict | None = None
) -> str:
    """The prompt as text, before tokenizing (for /tokenize's ``add_special_tokens``)."""
    return _apply_template(tokenizer, messages, tools, {**(extra or {}), "tokenize": False})


def _apply_template(tokenizer, messages: tuple[dict, ...], tools: list | None, extra: dict):
    if not getattr(tokenizer, "has_chat_template", False):
        raise bad_request("this model has no chat template; use /v1/completions", "messages")
    variables = {"add_generation_prompt": True, **({"tools": tools} if tools else {}), **extra}
    try:
        return tokenizer.apply_chat_template(list(messages), **variables)
    except Exception as exc:  # the template's own raise_exception(), or a jinja error
        raise bad_request(
            f"the model's chat template rejected these messages: {exc}", "messages"
        ) from None
