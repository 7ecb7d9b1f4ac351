"""POST /tokenize and /detokenize in llama-server's and vLLM's shapes, on the tiny model."""

from __future__ import annotations

import json

import pytest

from mlxd.api.tokenize import TokenizeRequest, _tokens

from helpers import get_json, sdk

ASK = [{"role": "user", "content": "What is the capital of France?"}]
TEXT = "Hello, world! Café 🙂"


@pytest.fixture(scope="module")
def url(tiny_server):
    return tiny_server.url


def test_nothing_is_the_empty_text(url):
    assert get_json(url + "/tokenize", {})[1]["tokens"] == []


def test_text_both_ways(url):
    status, llama = get_json(url + "/tokenize", {"content": TEXT})
    assert status == 200 and llama["count"] == len(llama["tokens"]) > 3
    assert llama["max_model_len"] == 1024
    status, vllm = get_json(url + "/tokenize", {"model": "tiny", "prompt": TEXT})
    assert status == 200 and vllm["tokens"] == llama["tokens"]  # no BOS in this vocabulary
    status, back = get_json(url + "/detokenize", {"tokens": llama["tokens"]})
    assert status == 200 and back == {"content": TEXT, "prompt": TEXT}


def test_pieces_and_token_strings(url):
    _, plain = get_json(url + "/tokenize", {"content": TEXT})
    _, pieces = get_json(url + "/tokenize", {"content": TEXT, "with_pieces": True})
    assert [p["id"] for p in pieces["tokens"]] == plain["tokens"]
    assert "".join(p["piece"] for p in pieces["tokens"]).startswith("Hello, world!")
    _, strs = get_json(url + "/tokenize", {"prompt": TEXT, "return_token_strs": True})
    assert len(strs["token_strs"]) == len(plain["tokens"]) and "token_strs" not in plain


def test_messages_are_the_chat_prompt(url):
    _, counted = get_json(url + "/tokenize", {"messages": ASK})
    reply = sdk(url).chat.completions.create(model="m", messages=ASK, max_tokens=1)
    assert counted["count"] == reply.usage.prompt_tokens
    _, bare = get_json(url + "/tokenize", {"messages": ASK, "add_generation_prompt": False})
    assert bare["tokens"] == counted["tokens"][: bare["count"]] and bare["count"] < counted["count"]
    _, text = get_json(url + "/detokenize", {"tokens": counted["tokens"]})
    assert text["content"].endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    "body,param",
    [
        ({"content": "a", "prompt": "b"}, "prompt"),
        ({"content": 5}, "content"),
        ({"content": "a", "foo": 1}, "foo"),
        ({"content": "a", "tools": []}, "tools"),
        ({"content": "a", "parse_special": False}, "parse_special"),
        ({"content": "a", "add_special": True, "add_special_tokens": False}, "add_special"),
        ({"content": "a", "with_pieces": "yes"}, "with_pieces"),
        ({"messages": ASK, "chat_template_kwargs": {"tools": []}}, "chat_template_kwargs.tools"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ],
)
def test_tokenize_refusals(url, body, param):
    status, err = get_json(url + "/tokenize", body)
    assert status == 400 and err["error"]["param"] == param, err


@pytest.mark.parametrize("tokens", [[-1], [10**9], "12", [1.5], [True], None, [1, "2"]], ids=str)
def test_detokenize_refuses_bad_ids(url, tokens):
    status, err = get_json(url + "/detokenize", {"tokens": tokens})
    assert status == 400 and err["error"]["param"] == "tokens", err


class FakeTokenizer:
    """Records how it was asked to encode."""

    has_chat_template = True

    def __init__(self) -> None:
        self.calls: list = []

    def encode(self, text, add_special_tokens):
        self.calls.append(("encode", text, add_special_tokens))
        return [1] + [2] * len(text) if add_special_tokens else [2] * len(text)

    def apply_chat_template(self, messages, tokenize=True, **kwargs):
        self.calls.append(("template", tokenize, kwargs))
        return "<chat>" if not tokenize else [3, 3]


@pytest.mark.parametrize(
    "body,special",
    [
        ({"content": "ab"}, False),  # llama-server adds none unless asked
        ({"content": "ab", "add_special": True}, True),
        ({"prompt": "ab"}, True),  # vLLM adds them unless told not to
        ({"prompt": "ab", "add_special_tokens": False}, False),
    ],
)
def test_special_tokens_follow_each_server(body, special):
    tok = FakeTokenizer()
    _tokens(tok, TokenizeRequest.from_json(json.dumps(body).encode()))
    assert tok.calls == [("encode", "ab", special)]


def test_messages_with_special_tokens_encode_the_rendered_text():
    tok = FakeTokenizer()
    body = {"messages": ASK, "add_special_tokens": True, "chat_template_kwargs": {"x": 1}}
    assert _tokens(tok, TokenizeRequest.from_json(json.dumps(body).encode())) == [1] + [2] * 6
    assert tok.calls[0] == ("template", False, {"add_generation_prompt": True, "x": 1})
    tok = FakeTokenizer()  # without: the chat prompt's ids, as chat renders them
    assert _tokens(tok, TokenizeRequest.from_json(json.dumps({"messages": ASK}).encode())) == [3, 3]
