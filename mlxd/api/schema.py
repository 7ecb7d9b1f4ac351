"""OpenAI request bodies -> frozen, validated records. Each body is parsed once, here.

Policy (README, "Unknown and unsupported fields"): every field is either honoured or refused with
a 400 whose ``param`` names it. A field OpenAI defines that mlxd does not implement yet is accepted
only at its neutral value (``n: 1``, ``presence_penalty: 0``, ...), where it changes nothing; a
field OpenAI does not define is refused, as OpenAI itself does. ``null`` means "not given".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlxd.api.messages import NAME_PATTERN, ToolChoice, refuse_unknown
from mlxd.api.messages import kind as _kind
from mlxd.api.messages import messages as _messages
from mlxd.api.messages import parallel_tool_calls as _parallel_tool_calls
from mlxd.api.messages import tool_choice as _tool_choice
from mlxd.api.messages import tools as _tools
from mlxd.constrain.json_schema import SchemaError, compile_schema
from mlxd.service.config import REASONING_FORMATS
from mlxd.transport.errors import HttpError, bad_request

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256  # a stop string longer than this is surely a mistake

MAX_CHOICES = 16  # n; each choice is a sequence in the batch
MAX_TOP_LOGPROBS_CHAT = 20  # OpenAI's limits
MAX_LOGPROBS_COMPLETIONS = 5
MAX_LOGIT_BIAS = 300  # entries; each value in [-100, 100] as OpenAI says

# Fields OpenAI defines that mlxd accepts only at the value that changes nothing.
NEUTRAL_VALUES: dict[str, Callable[[Any], bool]] = {
    "best_of": lambda v: v == 1,
    "suffix": lambda v: v == "",
    "store": lambda v: v is False,
    "service_tier": lambda v: v in ("auto", "default"),
}
# Fields that never change the output; accepted and recorded nowhere.
METADATA_FIELDS = {"user", "metadata"}


@dataclass(frozen=True)
class Sampling:
    """Sampling fields common to both endpoints; ``None`` = use the server default."""

    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]
    seed: int | None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: off; k: the sampled token plus the k most likely
    # Extensions many local servers take (mlx_lm.server, vLLM, llama.cpp); documented in README.
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class ResponseFormat:
    """``response_format`` other than text: any JSON object, or JSON valid against ``schema``."""

    type: str  # "json_object" or "json_schema"
    schema: dict | None = None  # None: any JSON object
    name: str | None = None
    grammar: Any = None  # the compiled schema (jsonschema.Grammar)


@dataclass(frozen=True)
class ChatRequest:
    model: str | None
    messages: tuple[dict, ...]  # roles normalised; see _message for the keys each role keeps
    sampling: Sampling
    stream: bool
    include_usage: bool
    response_format: ResponseFormat | None = None
    tools: tuple[dict, ...] = ()  # {"type": "function", "function": {name, description?, ...}}
    tool_choice: ToolChoice = ToolChoice("none")
    parallel_tool_calls: bool = True
    reasoning_format: str | None = None  # None: the server's --reasoning-format

    @classmethod
    def from_json(cls, body: bytes) -> ChatRequest:
        obj = parse_object(body)
        fields = Fields(obj, CHAT_FIELDS)
        tools = _tools(obj)
        return cls(
            model=fields.model(),
            messages=_messages(obj),
            sampling=fields.sampling(fields.chat_logprobs()),
            stream=fields.stream(),
            include_usage=fields.include_usage(),
            response_format=_response_format(obj),
            tools=tools,
            tool_choice=_tool_choice(obj, tools),
            parallel_tool_calls=_parallel_tool_calls(obj, tools),
            reasoning_format=fields.choice("reasoning_format", REASONING_FORMATS),
        )


@dataclass(frozen=True)
class CompletionRequest:
    model: str | None
    prompt: str | tuple[int, ...]  # text, or token ids given directly
    echo: bool
    sampling: Sampling
    stream: bool
    include_usage: bool
    response_format: ResponseFormat | None = None  # an extension here, as in vLLM

    @classmethod
    def from_json(cls, body: bytes) -> CompletionRequest:
        obj = parse_object(body)
        fields = Fields(obj, COMMON_FIELDS | {"prompt", "echo"})
        echo = obj.get("echo")
        if echo is not None and not isinstance(echo, bool):
            raise bad_request("'echo' must be a boolean", "echo")
        return cls(
            model=fields.model(),
            prompt=_prompt(obj),
            echo=bool(echo),
            sampling=fields.sampling(fields.integer("logprobs", 0, MAX_LOGPROBS_COMPLETIONS)),
            stream=fields.stream(),
            include_usage=fields.include_usage(),
            response_format=_response_format(obj),
        )


COMMON_FIELDS = (
    {
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_k",
        "min_p",
        "repetition_penalty",
        "response_format",
    }
    | set(NEUTRAL_VALUES)
    | METADATA_FIELDS
)
CHAT_FIELDS = COMMON_FIELDS | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_format",
}


def parse_object(body: bytes) -> dict:
    if not body:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise bad_request(f"the request body must be a JSON object, not {_kind(obj)}")
    return obj


def _reject_constant(name: str):
    raise bad_request(f"the request body is not valid JSON: {name} is not a JSON number")


class Fields:
    """Typed access to one body's fields; construction refuses unknown and unsupported ones."""

    def __init__(self, obj: dict, known: set[str]) -> None:
        self.obj = obj
        for key, value in obj.items():
            if key not in known:
                raise bad_request(
                    f"Unrecognized request argument supplied: {key}", key, "unknown_parameter"
                )
            neutral = NEUTRAL_VALUES.get(key)
            if neutral and value is not None and not neutral(value):
                raise bad_request(
                    f"'{key}' is not supported by mlxd yet; send it unset or at its default value",
                    key,
                    "unsupported_parameter",
                )

    def model(self) -> str | None:
        return self.optional("model", str, "a string")

    def stream(self) -> bool:
        return bool(self.optional("stream", bool, "a boolean"))

    def include_usage(self) -> bool:
        options = self.optional("stream_options", dict, "an object")
        if options is None:
            return False
        if not self.stream():
            raise bad_request(
                "'stream_options' is only allowed when 'stream' is true", "stream_options"
            )
        for key in options:
            if key != "include_usage":
                raise bad_request(f"Unrecognized stream option: {key}", f"stream_options.{key}")
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise bad_request(
                "'stream_options.include_usage' must be a boolean", "stream_options.include_usage"
            )
        return bool(usage)

    def sampling(self, logprobs: int | None) -> Sampling:
        return Sampling(
            max_tokens=self._max_tokens(),
            temperature=self.number("temperature", 0.0, 2.0),
            top_p=self.number("top_p", 0.0, 1.0, low_open=True),
            stop=self._stop(),
            seed=self.integer("seed", -(2**63), 2**64 - 1),
            n=self.integer("n", 1, MAX_CHOICES) or 1,
            presence_penalty=self.number("presence_penalty", -2.0, 2.0) or 0.0,
            frequency_penalty=self.number("frequency_penalty", -2.0, 2.0) or 0.0,
            logit_bias=self._logit_bias(),
            logprobs=logprobs,
            top_k=self.integer("top_k", 0, 2**31 - 1) or 0,
            min_p=self.number("min_p", 0.0, 1.0) or 0.0,
            repetition_penalty=self._repetition_penalty(),
        )

    def chat_logprobs(self) -> int | None:
        """Chat's pair: ``logprobs`` (bool) switches it on, ``top_logprobs`` says how many."""
        on = self.optional("logprobs", bool, "a boolean")
        top = self.integer("top_logprobs", 0, MAX_TOP_LOGPROBS_CHAT)
        if top is not None and not on:
            raise bad_request("'top_logprobs' needs 'logprobs' set to true", "top_logprobs")
        return (top or 0) if on else None

    def _logit_bias(self) -> tuple[tuple[int, float], ...]:
        bias = self.optional("logit_bias", dict, "an object")
        if not bias:
            return ()
        if len(bias) > MAX_LOGIT_BIAS:
            raise bad_request(f"'logit_bias' takes at most {MAX_LOGIT_BIAS} entries", "logit_bias")
        out = []
        for key, value in bias.items():
            if (
                not key.isdigit()
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not -100 <= value <= 100
            ):
                raise bad_request(
                    "'logit_bias' maps token ids (as strings) to numbers in "
                    f"[-100, 100]; got {key!r}: {value!r}",
                    "logit_bias",
                )
            out.append((int(key), float(value)))
        return tuple(out)

    def _repetition_penalty(self) -> float:
        value = self.number("repetition_penalty", 0.0, 10.0, low_open=True)
        return 1.0 if value is None else value

    def optional(self, key: str, kind: type, what: str):
        value = self.obj.get(key)
        # bool is an int subclass in Python; JSON true is never a number.
        if value is None or (
            isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        ):
            return value
        raise bad_request(f"'{key}' must be {what}, not {_kind(value)}", key)

    def number(self, key: str, low: float, high: float, low_open: bool = False) -> float | None:
        value = self.obj.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise bad_request(f"'{key}' must be a number, not {_kind(value)}", key)
        if value > high or value < low or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise bad_request(f"'{key}' must be in {bracket}{low:g}, {high:g}], got {value}", key)
        return float(value)

    def choice(self, key: str, values: tuple[str, ...]) -> str | None:
        value = self.optional(key, str, "a string")
        if value is not None and value not in values:
            raise bad_request(f"'{key}' must be one of {', '.join(values)}, got {value!r}", key)
        return value

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self.optional(key, int, "an integer")
        if value is not None and not low <= value <= high:
            raise bad_request(f"'{key}' must be between {low} and {high}, got {value}", key)
        return value

    def _max_tokens(self) -> int | None:
        a = self.integer("max_tokens", 1, 2**31 - 1)
        b = self.integer("max_completion_tokens", 1, 2**31 - 1)
        if a is not None and b is not None and a != b:
            raise bad_request(
                "'max_tokens' and 'max_completion_tokens' disagree; send one",
                "max_completion_tokens",
            )
        return b if b is not None else a

    def _stop(self) -> tuple[str, ...]:
        value = self.obj.get("stop")
        if value is None:
            return ()
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise bad_request("'stop' must be a string or a list of strings", "stop")
        if len(stops) > MAX_STOP_SEQUENCES:
            raise bad_request(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences", "stop")
        for s in stops:
            if not s or len(s) > MAX_STOP_CHARS:
                raise bad_request(
                    f"each stop sequence must hold 1 to {MAX_STOP_CHARS} characters", "stop"
                )
        return tuple(stops)


def _prompt(obj: dict) -> str | tuple[int, ...]:
    prompt = obj.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    ):
        return tuple(prompt)
    if prompt is None:
        raise bad_request("'prompt' is required", "prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise bad_request(
            "a list of several prompts is not supported yet; send one",
            "prompt",
            "unsupported_parameter",
        )
    raise bad_request("'prompt' must be a string or a non-empty array of token ids", "prompt")


def _response_format(obj: dict) -> ResponseFormat | None:
    value = obj.get("response_format")
    if value is None:
        return None
    kinds = {"text": {"type"}, "json_object": {"type"}, "json_schema": {"type", "json_schema"}}
    if not isinstance(value, dict) or value.get("type") not in kinds:
        raise bad_request(
            '\'response_format\' must be {"type": "text"}, {"type": '
            '"json_object"} or {"type": "json_schema", "json_schema": '
            "{...}}",
            "response_format",
        )
    for key in set(value) - kinds[value["type"]]:
        raise bad_request(
            f"Unrecognized response_format field: {key}",
            f"response_format.{key}",
            "unknown_parameter",
        )
    if value["type"] == "text":
        return None
    if value["type"] == "json_object":
        return ResponseFormat("json_object", grammar=compile_grammar(None, "response_format"))
    return _json_schema(value.get("json_schema"), "response_format.json_schema")


def _json_schema(spec: Any, where: str) -> ResponseFormat:
    if not isinstance(spec, dict):
        raise bad_request(f"'{where}' must be an object with a 'name' and a 'schema'", where)
    refuse_unknown(spec, ("name", "description", "schema", "strict"), "json_schema", where)
    name = spec.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise bad_request("'name' must be 1 to 64 of a-z, A-Z, 0-9, _ and -", f"{where}.name")
    for key, kind, what in (
        ("description", str, "a string"),
        ("schema", dict, "an object"),
        ("strict", bool, "a boolean"),
    ):
        if spec.get(key) is not None and not isinstance(spec[key], kind):
            raise bad_request(f"'{where}.{key}' must be {what}", f"{where}.{key}")
    # Enforced whether or not "strict" is set: a guarantee stronger than asked changes no
    # valid output.
    schema = spec.get("schema")
    return ResponseFormat("json_schema", schema, name, compile_grammar(schema, f"{where}.schema"))


def compile_grammar(schema: dict | None, param: str):
    """The schema's grammar for the constrained decoder, or a 400 naming what it refuses (the
    keywords outside OpenAI's strict-mode subset, and where they sit)."""
    try:
        return compile_schema(schema)
    except SchemaError as exc:
        raise bad_request(f"{param}: {exc}", param, "unsupported_schema") from None


def context_error(prompt_tokens: int, max_tokens: int, context: int, param: str) -> HttpError:
    return HttpError(
        400,
        "invalid_request_error",
        f"This model's maximum context length is {context} tokens. However, you "
        f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
        f"prompt, {max_tokens} for the completion).",
        param=param,
        code="context_length_exceeded",
    )
