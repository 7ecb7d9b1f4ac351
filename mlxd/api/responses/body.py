"""The body of POST /v1/responses (and of /v1/responses/input_tokens), field by field: what
validation accepts and what /openapi.json documents (see mlxd/api/fieldtable.py)."""

from __future__ import annotations

from mlxd.api.bodies import SAMPLING_FIELDS
from mlxd.api.fieldtable import Body, Field

MAX_METADATA_PAIRS = 16  # OpenAI's limits on metadata
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512

EXAMPLE_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}

NOTHING = "Accepted; changes nothing."


def _only(name: str, kind: str | tuple[str, ...], words: str, example) -> Field:
    return Field(
        name,
        kind,
        f"Defined by OpenAI, not implemented by mlxd: accepted only as {words}, where it changes "
        "nothing; any other value is a 400 naming it.",
        example,
    )


# What shapes the prompt: shared by both routes.
PROMPT_FIELDS = (
    Field("model", "string", "Any id: the one loaded model serves every request.", "mlxd"),
    Field(
        "input",
        ("string", "array"),
        "A user message, or items: messages (roles user, assistant, system, developer; "
        "`input_text`/`output_text` parts, `input_image` for a vision model), "
        "`function_call`, `function_call_output` and `reasoning` items.",
        "What is the capital of France?",
        required=True,
    ),
    Field(
        "instructions",
        "string",
        "A system message before the input (not carried over by `previous_response_id`).",
        "Answer in one word.",
    ),
    Field(
        "previous_response_id",
        "string",
        "Continue a stored response: its input and output items come before this input.",
        "resp_0123456789abcdef",
    ),
    Field(
        "tools",
        "array",
        "Function tools (`{type: function, name, description, parameters, strict}`); other "
        "tool types are a 400 naming the type. `strict` defaults to false here.",
        [EXAMPLE_TOOL],
    ),
    Field(
        "tool_choice",
        ("string", "object"),
        '"none", "auto", "required" or `{"type": "function", "name"}`; the last two are '
        "enforced by constrained decoding.",
        "auto",
    ),
    Field(
        "parallel_tool_calls",
        "boolean",
        "false: generation ends after the first call.",
        True,
    ),
    Field(
        "text",
        "object",
        '`{"format": {"type": "text" | "json_object" | "json_schema", ...}}`; JSON formats are '
        'enforced while decoding. `verbosity` only as "medium".',
        {"format": {"type": "json_object"}},
    ),
    Field(
        "reasoning",
        "object",
        '`{"effort", "summary"}`. Thinking models think unless effort is "none" (then the '
        'template is asked not to); other efforts set no budget. `summary` only "auto": the '
        "thinking comes back whole as `reasoning_text`.",
        {"effort": "medium", "summary": "auto"},
    ),
    Field(
        "truncation",
        "string",
        '"disabled" (the default): input beyond the context is a 400. "auto" is refused.',
        "disabled",
        schema={"enum": ["disabled"]},
    ),
    _only("conversation", ("string", "object"), "null", None),
)

RESPONSES_BODY = Body(
    PROMPT_FIELDS
    + (
        Field(
            "max_output_tokens",
            "integer",
            "Most tokens to generate, thinking included (default: the server's --max-tokens).",
            64,
            schema={"minimum": 1},
        ),
        *SAMPLING_FIELDS,
        Field("seed", "integer", "Extension: same seed, same text.", 7),
        Field("stream", "boolean", "Send semantic events (Server-Sent Events).", False),
        Field(
            "store",
            "boolean",
            "Keep the response in the in-memory store (default true; bounded by "
            "--responses-store-bytes, least recently used out).",
            True,
        ),
        Field(
            "include",
            "array",
            '"reasoning.encrypted_content": reasoning items carry their text, encoded, for '
            "clients that keep no server state (store false). Nothing else can be included.",
            ["reasoning.encrypted_content"],
            schema={"items": {"type": "string", "enum": ["reasoning.encrypted_content"]}},
        ),
        Field(
            "metadata",
            "object",
            f"Up to {MAX_METADATA_PAIRS} string pairs, kept with the response.",
            {"topic": "geography"},
        ),
        Field(
            "max_tool_calls",
            "integer",
            "Limits built-in tool calls; mlxd has none, so it changes nothing.",
            4,
        ),
        Field("user", "string", NOTHING, "user-1"),
        Field("safety_identifier", "string", NOTHING, "user-1"),
        Field(
            "prompt_cache_key",
            "string",
            "Accepted; changes nothing (the prompt cache matches prefixes by itself).",
            "thread-1",
        ),
        Field("client_metadata", "object", NOTHING + " (Codex CLI sends it.)", {"k": "v"}),
        _only("service_tier", "string", '"auto" or "default"', "auto"),
        _only("background", "boolean", "false", False),
        _only("top_logprobs", "integer", "0", 0),
        _only("stream_options", "object", '{"include_obfuscation": false}', {}),
        _only("prompt_cache_retention", "string", '"in_memory"', "in_memory"),
        _only("prompt", "object", "null", None),
    ),
    "A Responses API request (OpenAI's shape).",
)

INPUT_TOKENS_BODY = Body(
    PROMPT_FIELDS,
    "What POST /v1/responses would count as input tokens for the same fields.",
)
