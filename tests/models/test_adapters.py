"""--adapter: a LoRA adapter in mlx-lm's format, applied at load, shown in /v1/models and
/v1/mlx/status, and changing what the model says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import ServerThread, get_json

LORA = {"rank": 4, "dropout": 0.0, "scale": 20.0}


def write_adapter(model_dir: Path, out: Path) -> Path:
    """What ``mlx_lm.lora --train`` writes (adapter_config.json, adapters.safetensors), with
    random B matrices standing in for training (LoRA starts with B = 0, a no-op)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    model, _ = load(str(model_dir))
    model.freeze()
    linear_to_lora_layers(model, 2, LORA)
    mx.random.seed(1)
    trained = [
        (k, mx.random.normal(v.shape) * 0.05 if k.endswith("lora_b") else v)
        for k, v in tree_flatten(model.trainable_parameters())
    ]
    model.update(tree_unflatten(trained))
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(trained))
    (out / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": LORA})
    )
    return out


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return write_adapter(tiny_model_dir, tmp_path_factory.mktemp("lora") / "adapters")


def test_adapter_is_served_and_shown(tiny_model_dir, adapter_dir, tiny_server):
    from mlxd.service.config import Config

    srv = ServerThread(
        Config(model=str(tiny_model_dir), adapter=str(adapter_dir), port=0, max_tokens=8)
    ).start()
    try:
        _, models = get_json(srv.url + "/v1/models")
        assert models["data"][0]["adapter"] == str(adapter_dir)
        _, status = get_json(srv.url + "/v1/mlx/status")
        assert status["model"]["adapter"] == str(adapter_dir)
        body = {"prompt": "The quick brown", "max_tokens": 8, "temperature": 0}
        _, tuned = get_json(srv.url + "/v1/completions", body)
        _, base = get_json(tiny_server.url + "/v1/completions", body)
        assert tuned["choices"][0]["text"] != base["choices"][0]["text"]
        _, base_models = get_json(tiny_server.url + "/v1/models")
        assert "adapter" not in base_models["data"][0]
    finally:
        srv.close()


def test_a_bad_adapter_stops_the_load(tiny_model_dir, tmp_path):
    from mlxd.models import loader as models

    with pytest.raises(models.ModelLoadError, match="adapter_config.json"):
        models.load(tiny_model_dir, adapter=tmp_path)
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": LORA})
    )
    with pytest.raises(models.ModelLoadError, match="adapter"):
        models.load(tiny_model_dir, adapter=tmp_path)  # no adapters.safetensors


def test_adapter_option_parses():
    from mlxd.cli import build_parser, cli_values

    values = cli_values(
        build_parser().parse_args(["m", "--adapter", "a/b", "--reasoning-format", "none"])
    )
    assert values["adapter"] == "a/b" and values["reasoning_format"] == "none"
