"""A request body's fields, read once with their types and limits checked.

``parse_object`` turns bytes into a JSON object (or a 400 saying why not); ``Fields`` gives typed
access to its members and refuses, at construction, every field the route's table
(fieldtable.py) does not list or types otherwise, and every OpenAI field mlxd does not implement
at a value other than its neutral one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mlxd.api.fieldtable import Body
from mlxd.api.messages import kind as _kind
from mlxd.transport.errors import bad_request

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

    def __init__(
        self, obj: dict, body: Body, neutral_values: Mapping[str, Callable] = NEUTRAL_VALUES
    ) -> None:
        self.obj = obj
        body.check(obj)  # names, required fields, JSON types: the documented table
        for key, value in obj.items():
            neutral = neutral_values.get(key)
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
