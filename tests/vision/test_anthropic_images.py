"""Anthropic image blocks on the tiny VLM: the same image, asked through /v1/messages and through
chat, is the same prompt and the same greedy reply; on a text model it is a 400 naming the block."""

from __future__ import annotations

import base64

import anthropic
import pytest

pytest.importorskip("mlx_vlm")

from imagedata import chat, data_url, solid  # noqa: E402

from mlxd.service.config import Config  # noqa: E402

from helpers import ServerThread, get_json, messages_client  # noqa: E402

RED = solid((255, 0, 0))


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    srv = ServerThread(Config(model=str(tiny_vlm_dir), port=0, prompt_cache_bytes=0)).start()
    yield srv
    srv.close()


def test_an_image_block_is_the_chat_image_part(vlm):
    status, via_chat = get_json(
        vlm.url + "/v1/chat/completions",
        chat(data_url(RED), "What?", temperature=0, max_tokens=8),
    )
    assert status == 200, via_chat
    source = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(RED).decode()}
    msg = messages_client(vlm.url).messages.create(
        model="m",
        max_tokens=8,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What?"},
                    {"type": "image", "source": source},
                ],
            }
        ],
        extra_body={"temperature": 0},
    )
    assert msg.usage.input_tokens == via_chat["usage"]["prompt_tokens"]
    text = "".join(b.text for b in msg.content)
    assert text == via_chat["choices"][0]["message"]["content"]


def test_a_text_model_refuses_an_image_block(tiny_server):
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError) as info:
        messages_client(tiny_server.url).messages.create(
            model="m", max_tokens=4, messages=[{"role": "user", "content": [image]}]
        )
    assert "messages[0].content[0]" in info.value.body["error"]["message"]
