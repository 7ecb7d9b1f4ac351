"""The bodies of /v1/chat/completions and /v1/completions, field by field (see fieldtable.py): the
names validation accepts, their JSON types, the required ones, and their documentation.

The limits quoted are the ones fields.py enforces.
"""

from __future__ import annotations

from mlxd.api.fields import (
    MAX_CHOICES,
    MAX_LOGPROBS_COMPLETIONS,
    MAX_STOP_SEQUENCES,
    MAX_TOP_LOGPROBS_CHAT,
)
from mlxd.api.fieldtable import Body, Field
from mlxd.service.config import REASONING_FORMATS

EXAMPLE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _neutral(name: str, kind: str, value, words: str) -> Field:
    return Field(
        name,
        kind,
        f"Defined by OpenAI, not implemented by mlxd: accepted only as {words}, where it changes "
        "nothing; any other value is a 400.",
        value,
    )


# The sampler's fields (api/fields.py parses them into SamplingParams), declared once: chat,
# completions and the Responses API (responses/body.py) take them alike.
SAMPLING_FIELDS = (
    Field(
        "temperature",
        "number",
        "Sampling temperature; 0 is greedy.",
        0.7,
        schema={"minimum": 0, "maximum": 2},
    ),
    Field(
        "top_p",
        "number",
        "Nucleus sampling mass.",
        1.0,
        schema={"exclusiveMinimum": 0, "maximum": 1},
    ),
    Field("top_k", "integer", "Extension: sample among the k most likely tokens (0: off).", 0),
    Field("min_p", "number", "Extension: drop tokens below min_p x the top probability.", 0.0),
    Field(
        "repetition_penalty",
        "number",
        "Extension: mlx-lm's repetition penalty (1: off).",
        1.0,
        schema={"exclusiveMinimum": 0, "maximum": 10},
    ),
)


# Fields both routes take (``logprobs`` differs: a boolean for chat, a count for completions).
COMMON = (
    Field("model", "string", "Any id: the one loaded model serves every request.", "mlxd"),
    Field("stream", "boolean", "Send the reply as Server-Sent Events, chunk by chunk.", False),
    Field(
        "stream_options",
        "object",
        '`{"include_usage": true}`: a last chunk carries the usage (needs `stream`).',
        {"include_usage": True},
        context={"stream": True},
    ),
    Field(
        "max_tokens",
        "integer",
        "Most tokens to generate (default: the server's --max-tokens, capped by the context).",
        16,
        schema={"minimum": 1},
    ),
    *SAMPLING_FIELDS,
    Field(
        "stop",
        ("string", "array"),
        f"Up to {MAX_STOP_SEQUENCES} strings that end the text (cut out of it).",
        ["\n\n"],
        schema={"items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
    ),
    Field("seed", "integer", "Same seed, same text, whatever else shares the batch.", 7),
    Field(
        "n",
        "integer",
        "Choices to generate from one prefill.",
        1,
        schema={"minimum": 1, "maximum": MAX_CHOICES},
    ),
    Field(
        "presence_penalty",
        "number",
        "Penalty on tokens already present.",
        0.0,
        schema={"minimum": -2, "maximum": 2},
    ),
    Field(
        "frequency_penalty",
        "number",
        "Penalty by how often a token appeared.",
        0.0,
        schema={"minimum": -2, "maximum": 2},
    ),
    Field(
        "logit_bias",
        "object",
        "Token id (as a string) -> bias in [-100, 100].",
        {"1": -100},
        schema={"additionalProperties": {"type": "number"}},
    ),
    Field(
        "response_format",
        "object",
        '`{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"name", '
        '"schema", "strict"}}`: enforced while decoding.',
        {"type": "json_object"},
    ),
    _neutral("best_of", "integer", 1, "1"),
    _neutral("suffix", "string", "", '""'),
    _neutral("store", "boolean", False, "false"),
    _neutral("service_tier", "string", "auto", '"auto" or "default"'),
    Field("user", "string", "Accepted; changes nothing.", "user-1"),
    Field("metadata", "object", "Accepted; changes nothing.", {"k": "v"}),
)

CHAT_BODY = Body(
    COMMON
    + (
        Field(
            "messages",
            "array",
            "The conversation: system, developer, user, assistant (with `tool_calls`) and tool "
            "(with `tool_call_id`) messages; content a string or text parts.",
            [{"role": "user", "content": "What is the capital of France?"}],
            required=True,
            schema={"items": {"type": "object"}, "minItems": 1},
        ),
        Field(
            "max_completion_tokens", "integer", "Same as `max_tokens`.", 16, schema={"minimum": 1}
        ),
        Field("logprobs", "boolean", "Return the sampled tokens' log-probabilities.", False),
        Field(
            "top_logprobs",
            "integer",
            "With `logprobs`: this many most likely alternatives per token.",
            2,
            schema={"minimum": 0, "maximum": MAX_TOP_LOGPROBS_CHAT},
            context={"logprobs": True},
        ),
        Field(
            "tools",
            "array",
            "Function tools the model may call (its chat template must take tools).",
            [EXAMPLE_TOOL],
        ),
        Field(
            "tool_choice",
            ("string", "object"),
            '"none", "auto", "required" or `{"type": "function", "function": {"name"}}`; the '
            "last two are enforced.",
            "none",
        ),
        Field(
            "parallel_tool_calls",
            "boolean",
            "false: generation ends after the first call.",
            True,
            context={"tools": [EXAMPLE_TOOL]},
        ),
        Field(
            "reasoning_format",
            "string",
            'Thinking models: "none" leaves the thinking in `content`.',
            "auto",
            schema={"enum": list(REASONING_FORMATS)},
        ),
    ),
    "A chat completion request (OpenAI's shape).",
)

COMPLETION_BODY = Body(
    COMMON
    + (
        Field(
            "prompt",
            ("string", "array"),
            "The text to continue, or its token ids.",
            "Once upon a time",
            required=True,
        ),
        Field("echo", "boolean", "Prepend the prompt to the text.", False),
        Field(
            "logprobs",
            "integer",
            "Log-probabilities of the sampled token and this many alternatives.",
            1,
            schema={"minimum": 0, "maximum": MAX_LOGPROBS_COMPLETIONS},
        ),
    ),
    "A text completion request (OpenAI's legacy shape).",
)
