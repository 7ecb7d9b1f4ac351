"""A server on the tiny random VLM: images decode inside the batch with text, their tokens are
counted, a follow-up reuses the image prefill, and each limit refuses with its 400."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("mlx_vlm")

from imagedata import chat, data_url, noise, pixel_bomb, solid, truncated_png  # noqa: E402

from mlxd.service.config import Config  # noqa: E402

from helpers import ServerThread, SlowModel, get_json, sdk  # noqa: E402

RED, BLUE = data_url(solid((255, 0, 0))), data_url(solid((0, 0, 255)))
IMAGE_TOKENS = 64  # the tiny VLM: a 64 x 64 crop in 8 x 8 patches
GREEDY = {"temperature": 0, "max_tokens": 8}


@pytest.fixture(scope="module")
def slow_vlm(tiny_vlm_dir):
    """No prompt cache (every image prefilled afresh), forward passes slowed so that concurrent
    requests share the batch, and small image limits."""
    config = Config(
        model=str(tiny_vlm_dir),
        port=0,
        prompt_cache_bytes=0,
        max_images=2,
        max_image_bytes=40_000,
        max_image_pixels=300 * 300,
    )
    srv = ServerThread(config, model_wrapper=lambda m: SlowModel(m, 0.02)).start()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    srv = ServerThread(Config(model=str(tiny_vlm_dir), port=0)).start()
    yield srv
    srv.close()


def ask(srv, body: dict):
    return get_json(srv.url + "/v1/chat/completions", body)


def content(srv, url: str | None, text: str = "What?") -> str:
    body = (
        chat(url, text, **GREEDY)
        if url
        else {"messages": [{"role": "user", "content": text}], **GREEDY}
    )
    code, out = ask(srv, body)
    assert code == 200, out
    return out["choices"][0]["message"]["content"]


def test_same_image_same_tokens_alone_and_in_a_batch(slow_vlm):
    alone = content(slow_vlm, RED)
    assert content(slow_vlm, RED) == alone
    with ThreadPoolExecutor(6) as pool:
        jobs = [
            pool.submit(content, slow_vlm, url, text)
            for url, text in [
                (RED, "What?"),
                (BLUE, "What?"),
                (None, "Hello there"),
                (RED, "What?"),
            ]
            + [(data_url(noise(i)), "Describe it.") for i in range(2)]
        ]
        results = [j.result(timeout=120) for j in jobs]
    assert results[0] == results[3] == alone


def test_different_images_different_tokens(slow_vlm):
    assert content(slow_vlm, RED) != content(slow_vlm, BLUE)


def test_image_tokens_in_usage(slow_vlm):
    code, text_only = ask(slow_vlm, {"messages": [{"role": "user", "content": "What?"}], **GREEDY})
    code2, with_image = ask(slow_vlm, chat(RED, "What?", **GREEDY))
    assert code == code2 == 200
    extra = with_image["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"]
    assert extra == IMAGE_TOKENS  # the <image> placeholder became 64 image tokens
    two = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What?"},
                    {"type": "image_url", "image_url": {"url": RED}},
                    {"type": "image_url", "image_url": {"url": BLUE}},
                ],
            }
        ],
        **GREEDY,
    }
    code, both = ask(slow_vlm, two)
    assert code == 200
    assert both["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"] == 2 * IMAGE_TOKENS


def healthy(srv) -> None:
    assert get_json(srv.url + "/health")[0] == 200
    assert content(srv, RED)  # and still answers an image request


@pytest.mark.parametrize(
    "url,code,message",
    [
        (data_url(noise(1, (200, 200), "PNG")), "image_too_large", "--max-image-bytes (40000)"),
        (
            data_url(solid((9, 9, 9), (400, 300))),
            "image_too_many_pixels",
            "--max-image-pixels (90000)",
        ),
        (data_url(pixel_bomb()), "image_too_many_pixels", "100000 x 100000"),
        ("data:image/png;base64,%%%corrupt%%%", "invalid_image", "not valid base64"),
        (data_url(b"GIF? no: just some text bytes"), "invalid_image", "not an image"),
        (data_url(truncated_png()), "invalid_image", "truncated or corrupt"),
        ("/etc/hostname", "image_files_disabled", "--allow-image-files"),
        ("http://127.0.0.1:9/a.png", "image_urls_disabled", "--allow-image-urls"),
    ],
)
def test_each_limit_refuses_and_the_server_stays_healthy(slow_vlm, url, code, message):
    status, out = ask(slow_vlm, chat(url, **GREEDY))
    assert status == 400, out
    err = out["error"]
    assert err["param"] == "messages[0].content[1]" and err["code"] == code
    assert message in err["message"]
    healthy(slow_vlm)


def test_too_many_images(slow_vlm):
    parts = [{"type": "image_url", "image_url": {"url": RED}} for _ in range(3)]
    status, out = ask(slow_vlm, {"messages": [{"role": "user", "content": parts}], **GREEDY})
    assert status == 400
    assert out["error"]["param"] == "messages[0].content[2]"
    assert "--max-images-per-request (2)" in out["error"]["message"]
    healthy(slow_vlm)


def test_follow_up_about_the_same_image_reuses_its_prefill(vlm):
    first = chat(RED, "What?", **GREEDY)
    code, out = ask(vlm, first)
    assert code == 200
    follow = {
        "messages": first["messages"]
        + [
            {"role": "assistant", "content": out["choices"][0]["message"]["content"]},
            {"role": "user", "content": "And the colour?"},
        ],
        **GREEDY,
    }
    code, again = ask(vlm, follow)
    assert code == 200
    cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > IMAGE_TOKENS  # the image's tokens came from the cache
    # Another image in the same place: only the text before the image is reused.
    code, other = ask(vlm, chat(BLUE, "What?", **GREEDY))
    assert code == 200 and other["usage"]["prompt_tokens_details"]["cached_tokens"] < 20


def test_capabilities_show_vision(vlm):
    code, models = get_json(vlm.url + "/v1/models")
    assert code == 200 and models["data"][0]["capabilities"] == ["text", "vision"]
    code, status = get_json(vlm.url + "/v1/mlx/status")
    assert status["model"]["capabilities"] == ["text", "vision"]


def test_request_features_on_a_vlm(vlm):
    """logprobs, n, stop strings and json_schema work with an image; tools are refused by the
    template (the tiny VLM's takes none), naming the field."""
    code, out = ask(vlm, chat(RED, logprobs=True, top_logprobs=2, n=2, **GREEDY))
    assert code == 200 and len(out["choices"]) == 2
    assert out["choices"][0]["message"]["content"] == out["choices"][1]["message"]["content"]
    assert len(out["choices"][0]["logprobs"]["content"]) >= 1
    whole = out["choices"][0]["message"]["content"]
    stop = whole[2:4] if len(whole) >= 4 else None
    if stop and stop not in whole[:2]:
        code, cut = ask(vlm, chat(RED, stop=[stop], **GREEDY))
        assert code == 200 and stop not in cut["choices"][0]["message"]["content"]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    code, out = ask(vlm, chat(RED, response_format=fmt, temperature=0, max_tokens=40))
    assert code == 200
    assert isinstance(json.loads(out["choices"][0]["message"]["content"])["a"], int)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    code, out = ask(vlm, chat(RED, tools=[tool], **GREEDY))
    assert code == 400 and out["error"]["param"] == "tools"


def test_openai_sdk_streams_an_image_request(vlm):
    client = sdk(vlm.url)
    stream = client.chat.completions.create(
        model="tiny-vlm",
        messages=chat(RED, "What?")["messages"],
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens > IMAGE_TOKENS
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content(
        vlm, RED
    )
