"""``POST /tokenize`` and ``POST /detokenize``, in the shapes llama-server and vLLM give them.

Tokenize takes a text, as ``content`` (llama-server) or ``prompt`` (vLLM), or ``messages`` (vLLM):
chat messages with the model's template applied exactly as /v1/chat/completions applies it
(``tools``, ``add_generation_prompt``, ``continue_final_message`` and ``chat_template_kwargs`` as
vLLM reads them). Special tokens (BOS...) are added as each server adds them by default:
llama-server's ``content`` without, vLLM's ``prompt`` with, and ``messages`` without (the
template writes its own); ``add_special`` (llama-server) or ``add_special_tokens`` (vLLM) says
otherwise. Out comes ``{"tokens", "count", "max_model_len"}`` (both servers' keys), the tokens as
``{"id", "piece"}`` objects with llama-server's ``with_pieces``, and vLLM's ``token_strs`` with
``return_token_strs``. Detokenize takes ``{"tokens": [...]}`` and answers the text as both
``content`` (llama-server) and ``prompt`` (vLLM).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import ClassVar

from mlxd.api.app import chat_text, render_chat
from mlxd.api.fields import Fields, parse_object
from mlxd.api.fieldtable import Body, Field
from mlxd.api.messages import messages as chat_messages
from mlxd.api.messages import tools as chat_tools
from mlxd.api.openapi import operation
from mlxd.transport.errors import bad_request

TEXT_KEYS = ("content", "prompt")
TEMPLATE_FLAGS = ("add_generation_prompt", "continue_final_message")  # vLLM's chat options
CHAT_ONLY = ("tools", "chat_template_kwargs", *TEMPLATE_FLAGS)
# The names the template call gives its own arguments: chat_template_kwargs may not set them.
RESERVED_TEMPLATE_KWARGS = {"messages", "tools", "tokenize", *TEMPLATE_FLAGS}
ASK = [{"role": "user", "content": "What is the capital of France?"}]
WITH_MESSAGES = {"messages": ASK}

TOKENIZE_BODY = Body(
    (
        Field("model", "string", "Any id: the one loaded model serves every request.", "mlxd"),
        Field("content", "string", "A text (llama-server's name).", "Hello, world!"),
        Field("prompt", "string", "A text (vLLM's name).", "Hello, world!"),
        Field(
            "messages",
            "array",
            "Chat messages, rendered with the model's template as chat renders them.",
            ASK,
        ),
        Field(
            "tools", "array", "Tools for the template (with `messages`).", [], context=WITH_MESSAGES
        ),
        Field(
            "add_generation_prompt",
            "boolean",
            "End with the assistant's turn opened (default true; with `messages`).",
            True,
            context=WITH_MESSAGES,
        ),
        Field(
            "continue_final_message",
            "boolean",
            "Leave the last message open to be continued (with `messages`).",
            False,
            context=WITH_MESSAGES,
        ),
        Field(
            "chat_template_kwargs",
            "object",
            "More template variables (with `messages`).",
            {"enable_thinking": False},
            context=WITH_MESSAGES,
        ),
        Field(
            "add_special_tokens",
            "boolean",
            "Add the tokenizer's special tokens (vLLM's name; default true for `prompt`, false "
            "otherwise).",
            False,
        ),
        Field("add_special", "boolean", "The same, llama-server's name.", False),
        Field(
            "parse_special",
            "boolean",
            "Only true: special tokens written in the text are read as special tokens.",
            True,
        ),
        Field("with_pieces", "boolean", 'Tokens as `{"id", "piece"}` (llama-server).', False),
        Field("return_token_strs", "boolean", "Add `token_strs` (vLLM).", False),
    ),
    "A text or a chat, as token ids. Send one of `content`, `prompt` or `messages` (none: "
    "the empty text).",
)
DETOKENIZE_BODY = Body(
    (
        Field("model", "string", "Any id: the one loaded model serves every request.", "mlxd"),
        Field("tokens", "array", "Token ids.", [1, 2, 3], required=True),
    ),
    "Token ids as text, answered as `content` (llama-server) and `prompt` (vLLM).",
)


@dataclass(frozen=True)
class TokenizeRequest:
    text: str | None  # content or prompt
    messages: tuple[dict, ...]  # or chat messages (then text is None)
    tools: list | None
    add_special: bool
    with_pieces: bool
    token_strs: bool
    template_variables: dict = field(default_factory=dict)

    BODY: ClassVar[Body] = TOKENIZE_BODY

    @classmethod
    def from_json(cls, body: bytes) -> TokenizeRequest:
        obj = parse_object(body)
        Fields(obj, cls.BODY, {})  # names and JSON types, as the table says
        given = [k for k in (*TEXT_KEYS, "messages") if obj.get(k) is not None]
        if len(given) > 1:
            raise bad_request(
                "send one of 'content', 'prompt' (a text) or 'messages' (a chat)", given[1]
            )
        source = given[0] if given else "content"
        if source != "messages":
            for key in CHAT_ONLY:
                if obj.get(key) is not None:
                    raise bad_request(f"'{key}' goes with 'messages'", key)
        if obj.get("parse_special") is False:
            raise bad_request(
                "'parse_special': false is not supported; special tokens in the text are read "
                "as special tokens",
                "parse_special",
            )
        return cls(
            text=(obj.get(source) or "") if source != "messages" else None,
            messages=chat_messages(obj) if source == "messages" else (),
            tools=list(chat_tools(obj)) or None,
            add_special=_add_special(obj, default=source == "prompt"),
            with_pieces=bool(obj.get("with_pieces")),
            token_strs=bool(obj.get("return_token_strs")),
            template_variables=_template_variables(obj),
        )


@dataclass(frozen=True)
class DetokenizeRequest:
    tokens: tuple[int, ...]

    BODY: ClassVar[Body] = DETOKENIZE_BODY

    @classmethod
    def from_json(cls, body: bytes) -> DetokenizeRequest:
        obj = parse_object(body)
        Fields(obj, cls.BODY, {})
        ids = obj["tokens"]
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise bad_request("'tokens' must be an array of token ids (integers)", "tokens")
        return cls(tuple(ids))


def _add_special(obj: dict, default: bool) -> bool:
    a, b = obj.get("add_special_tokens"), obj.get("add_special")
    if a is not None and b is not None and a != b:
        raise bad_request(
            "'add_special_tokens' and 'add_special' disagree; send one", "add_special"
        )
    return default if a is None and b is None else bool(a if a is not None else b)


def _template_variables(obj: dict) -> dict:
    variables = {k: obj[k] for k in TEMPLATE_FLAGS if obj.get(k) is not None}
    extra = obj.get("chat_template_kwargs") or {}
    for key in extra:
        if key in RESERVED_TEMPLATE_KWARGS:
            raise bad_request(
                f"'chat_template_kwargs.{key}' is set by the request itself",
                f"chat_template_kwargs.{key}",
            )
    return {**extra, **variables}


@operation(
    "Tokenize a text or a chat (llama-server's and vLLM's /tokenize)",
    body=TokenizeRequest,
    example={"content": "Hello, world!"},
)
async def tokenize(app, ex) -> None:
    app.require_ready()
    req = TokenizeRequest.from_json(ex.request.body)
    tokenizer = app.model.tokenizer
    tokens = await asyncio.to_thread(_tokens, tokenizer, req)
    body: dict = {
        "tokens": [{"id": t, "piece": app.token_text(t)} for t in tokens]
        if req.with_pieces
        else tokens,
        "count": len(tokens),
        "max_model_len": app.model.context_length,
    }
    if req.token_strs:
        body["token_strs"] = tokenizer.convert_ids_to_tokens(tokens)
    await ex.send_json(200, body)


def _tokens(tokenizer, req: TokenizeRequest) -> list[int]:
    if req.text is not None:
        return list(tokenizer.encode(req.text, add_special_tokens=req.add_special))
    if not req.add_special:  # the very prompt a chat request with these messages runs on
        return render_chat(tokenizer, req.messages, req.tools, req.template_variables)
    text = chat_text(tokenizer, req.messages, req.tools, req.template_variables)
    return list(tokenizer.encode(text, add_special_tokens=True))


@operation("Detokenize token ids (llama-server's and vLLM's /detokenize)", body=DetokenizeRequest)
async def detokenize(app, ex) -> None:
    app.require_ready()
    req = DetokenizeRequest.from_json(ex.request.body)
    app.check_token_ids(req.tokens, "tokens")
    try:
        text = await asyncio.to_thread(app.model.tokenizer.decode, list(req.tokens))
    except Exception as exc:  # an id the model has an embedding for but the tokenizer lacks
        raise bad_request(f"these tokens do not decode: {exc}", "tokens") from None
    await ex.send_json(200, {"content": text, "prompt": text})
