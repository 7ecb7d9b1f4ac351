"""Images through the Responses API: input_image parts reach a vision model's processor exactly
as chat's image_url parts do (the same answer, the same image tokens), and a text model refuses
them naming the part."""

from __future__ import annotations

import openai
import pytest

pytest.importorskip("mlx_vlm")

from imagedata import chat, data_url, solid  # noqa: E402

from mlxd.service.config import Config  # noqa: E402

from helpers import ServerThread, get_json, sdk  # noqa: E402

RED = data_url(solid((255, 0, 0)))
IMAGE_TOKENS = 64  # the tiny VLM: a 64 x 64 crop in 8 x 8 patches


@pytest.fixture(scope="module")
def vlm(tiny_vlm_dir):
    srv = ServerThread(Config(model=str(tiny_vlm_dir), port=0)).start()
    yield srv
    srv.close()


def test_an_image_answers_as_in_chat(vlm):
    code, answer = get_json(
        vlm.url + "/v1/chat/completions", chat(RED, "What?", temperature=0, max_tokens=8)
    )
    assert code == 200
    reply = sdk(vlm.url).responses.create(
        model="tiny-vlm",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What?"},
                    {"type": "input_image", "image_url": RED},
                ],
            }
        ],
        temperature=0,
        max_output_tokens=8,
    )
    assert reply.output_text == answer["choices"][0]["message"]["content"]
    assert reply.usage.input_tokens == answer["usage"]["prompt_tokens"] > IMAGE_TOKENS
    # Continued, the image is part of the conversation (and of the cached prefix).
    again = sdk(vlm.url).responses.create(
        model="tiny-vlm", previous_response_id=reply.id, input="And?", max_output_tokens=4
    )
    assert again.usage.input_tokens_details.cached_tokens > IMAGE_TOKENS


def test_a_text_model_refuses_an_image_by_name(tiny_server):
    with pytest.raises(openai.BadRequestError) as info:
        sdk(tiny_server.url).responses.create(
            model="m",
            input=[{"role": "user", "content": [{"type": "input_image", "image_url": RED}]}],
        )
    assert info.value.body["param"] == "input[0].content[0]"
    assert info.value.code == "model_has_no_vision"
