"""Which installs serve a VLM, and what a text-only model says to an image."""

from __future__ import annotations

import builtins
import json
import sys

import pytest

from mlxd.models import loader, vlm
from mlxd.service import config as cfg
from mlxd.service import sources

from helpers import get_json


@pytest.fixture
def vlm_shaped_dir(tmp_path):
    """Only a config.json with a vision_config: detection needs nothing else."""
    path = tmp_path / "some-vlm"
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps({"model_type": "llava", "vision_config": {}, "text_config": {}})
    )
    return path


def test_detection_reads_the_config(vlm_shaped_dir, tiny_model_dir):
    assert vlm.vlm_config(vlm_shaped_dir)["model_type"] == "llava"
    assert vlm.vlm_config(tiny_model_dir) is None  # a text model


def test_frozen_binary_refuses_a_vlm_naming_the_install(vlm_shaped_dir, monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(loader.ModelLoadError) as info:
        loader.load(vlm_shaped_dir)
    message = str(info.value)
    assert "vision-language model (llava)" in message
    assert "binary does not carry vision" in message and 'pip install "mlxd[vision]"' in message


def test_without_mlx_vlm_the_extra_is_named(vlm_shaped_dir, monkeypatch):
    real_import = builtins.__import__

    def no_vlm(name, *args, **kwargs):
        if name == "mlx_vlm" or name.startswith("mlx_vlm."):
            raise ImportError("No module named 'mlx_vlm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vlm)
    with pytest.raises(loader.ModelLoadError) as info:
        loader.load(vlm_shaped_dir)
    assert 'pip install "mlxd[vision]"' in str(info.value)


def test_text_model_given_an_image_says_it_has_no_vision(tiny_server):
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    code, out = get_json(
        tiny_server.url + "/v1/chat/completions",
        {"messages": [{"role": "user", "content": parts}], "max_tokens": 2},
    )
    assert code == 400
    assert out["error"]["param"] == "messages[0].content[1]"
    assert "has no vision" in out["error"]["message"]
    assert get_json(tiny_server.url + "/v1/models")[1]["data"][0]["capabilities"] == ["text"]


def test_image_options_from_every_source():
    config = sources.resolve(
        {"max_images": 3},
        {"MLXD_MAX_IMAGE_BYTES": "1M", "MLXD_ALLOW_IMAGE_URLS": "true"},
    )
    assert (config.max_images, config.max_image_bytes, config.allow_image_urls) == (
        3,
        1024**2,
        True,
    )
    assert config.max_image_pixels == cfg.DEFAULT_MAX_IMAGE_PIXELS
    assert config.allow_image_files is None and config.image_url_timeout == 10.0


def test_mrope_families_refused_with_the_reason(tmp_path):
    pytest.importorskip("mlx_vlm")
    path = tmp_path / "qwen2-vl-like"
    path.mkdir()
    text = {
        "model_type": "qwen2_vl",
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    }
    (path / "config.json").write_text(
        json.dumps({"model_type": "qwen2_vl", "vision_config": {}, "text_config": text})
    )
    with pytest.raises(loader.ModelLoadError) as info:
        loader.load(path)
    assert "M-RoPE" in str(info.value)
