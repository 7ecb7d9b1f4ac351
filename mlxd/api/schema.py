"""OpenAI request bodies -> frozen, validated records. Each body is parsed once, here.

Policy (README, "Unknown and unsupported fields"): every field is either honoured or refused with
a 400 whose ``param`` names it. A field OpenAI defines that mlxd does not implement yet is accepted
only at its neutral value (``n: 1``, ``presence_penalty: 0``, ...), where it changes nothing; a
field OpenAI does not define is refused, as OpenAI itself does. ``null`` means "not given".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mlxd.api.bodies import CHAT_BODY, COMPLETION_BODY
from mlxd.api.fields import (  # Sampling and the limits: re-exported for the API's callers
    MAX_LOGPROBS_COMPLETIONS,
    Fields,
    Sampling,
    parse_object,
)
from mlxd.api.fieldtable import Body
from mlxd.api.messages import NAME_PATTERN, ToolChoice, refuse_unknown
from mlxd.api.messages import messages as _messages
from mlxd.api.messages import parallel_tool_calls as _parallel_tool_calls
from mlxd.api.messages import tool_choice as _tool_choice
from mlxd.api.messages import tools as _tools
from mlxd.constrain.json_schema import SchemaError, compile_schema
from mlxd.service.config import REASONING_FORMATS
from mlxd.transport.errors import HttpError, bad_request


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

    BODY: ClassVar[Body] = CHAT_BODY  # the fields, as validated and documented (bodies.py)

    @classmethod
    def from_json(cls, body: bytes) -> ChatRequest:
        obj = parse_object(body)
        fields = Fields(obj, cls.BODY)
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

    BODY: ClassVar[Body] = COMPLETION_BODY

    @classmethod
    def from_json(cls, body: bytes) -> CompletionRequest:
        obj = parse_object(body)
        fields = Fields(obj, cls.BODY)
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
    return json_schema_format(value.get("json_schema"), "response_format.json_schema")


def json_schema_format(spec: Any, where: str) -> ResponseFormat:
    """``{"name", "description", "schema", "strict"}`` -> the enforced format."""
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
