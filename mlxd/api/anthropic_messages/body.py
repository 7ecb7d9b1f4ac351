"""The bodies of POST /v1/messages and /v1/messages/count_tokens, field by field: what validation
accepts and what /openapi.json documents (see mlxd/api/fieldtable.py). The limits quoted are the
ones request.py enforces."""

from __future__ import annotations

from mlxd.api.fieldtable import Body, Field

# Anthropic documents no limit; each is scanned at every token, and 16 is plenty.
MAX_STOP_SEQUENCES = 16
# Claude Code with a few MCP servers sends well over a hundred tools.
MAX_TOOLS = 512
MIN_THINKING_BUDGET = 1024  # tokens; Anthropic's minimum for budget_tokens
EFFORTS = ("low", "medium", "high", "xhigh", "max")
SERVICE_TIERS = ("auto", "standard_only")

EXAMPLE_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
EXAMPLE_MESSAGE = {"max_tokens": 40}  # added to the documented example of POST /v1/messages
NOTHING = "Accepted; changes nothing here."

# What shapes the prompt: shared by both routes.
PROMPT_FIELDS = (
    Field("model", "string", "Any id: the one loaded model serves every request.", "mlxd"),
    Field(
        "messages",
        "array",
        "The conversation: user and assistant turns (consecutive ones of a role are one turn), "
        "content a string or blocks: `text`, `image` (vision models), `tool_use`, "
        "`tool_result` (string or text/image blocks, `is_error`), `thinking`. A final "
        "assistant turn is a prefill the reply continues.",
        [{"role": "user", "content": "What is the capital of France?"}],
        required=True,
    ),
    Field(
        "system",
        ("string", "array"),
        "The system prompt: a string or text blocks.",
        "Answer in one word.",
    ),
    Field(
        "tools",
        "array",
        f"Custom tools (`name`, `description`, `input_schema`, `strict`), up to {MAX_TOOLS}; "
        "Anthropic's server tools are a 400 naming the type.",
        [EXAMPLE_TOOL],
    ),
    Field(
        "tool_choice",
        "object",
        '`{"type": "auto"|"any"|"tool"|"none"}` (`name` with "tool"), and '
        "`disable_parallel_tool_use`; any and tool are enforced by constrained decoding.",
        {"type": "auto"},
    ),
    Field(
        "thinking",
        "object",
        '`{"type": "enabled", "budget_tokens": n >= 1024}` or "adaptive": thinking blocks out '
        '(`display: "omitted"` leaves their text out); "disabled": the template is told '
        "`enable_thinking: false`. The budget is bounded by max_tokens, not apart.",
        {"type": "enabled", "budget_tokens": MIN_THINKING_BUDGET},
    ),
    Field(
        "output_config",
        "object",
        '`format` (`{"type": "json_schema", "schema"}`) is enforced while decoding; `effort` '
        "is accepted and changes nothing (one effort here).",
        {"effort": "medium"},
    ),
    Field(
        "context_management",
        "object",
        '`edits`: `clear_thinking_20251015` (`keep`: "all" or thinking turns) is applied to '
        "the history; any other edit is a 400.",
        {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    ),
    Field(
        "cache_control",
        "object",
        "Accepted, here and on blocks, and ignored: the prompt cache keeps every prefix.",
        {"type": "ephemeral"},
    ),
)

MESSAGES_BODY = Body(
    (
        *PROMPT_FIELDS,
        Field(
            "max_tokens",
            "integer",
            "Most tokens to generate; past the room the prompt leaves it is cut to fit "
            '(stop_reason "model_context_window_exceeded" when reached).',
            64,
            required=True,
            schema={"minimum": 1},
        ),
        Field(
            "stop_sequences",
            "array",
            f"Up to {MAX_STOP_SEQUENCES} strings; the one hit is named in `stop_sequence`.",
            ["\n\nHuman:"],
        ),
        Field("temperature", "number", "0 to 1.", 0.5, schema={"minimum": 0, "maximum": 1}),
        Field("top_p", "number", "Nucleus sampling, in (0, 1].", 0.9),
        Field(
            "top_k", "integer", "Sample from the k most likely tokens.", 40, schema={"minimum": 0}
        ),
        Field("metadata", "object", "`user_id`. " + NOTHING, {"user_id": "user-1234"}),
        Field(
            "service_tier",
            "string",
            NOTHING,
            "auto",
            schema={"enum": list(SERVICE_TIERS)},
        ),
        Field("stream", "boolean", "Send the reply as Anthropic's server-sent events.", False),
    ),
    "Anthropic's Messages API, on the same engine and batch as chat completions.",
)
COUNT_TOKENS_BODY = Body(
    PROMPT_FIELDS, "What POST /v1/messages would count as input tokens for the same fields."
)
