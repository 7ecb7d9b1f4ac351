"""Build a tiny random-weight vision-language model that ``mlx_vlm.load`` (and so ``mlxd``) serves.

    python tools/make_tiny_vlm.py DIR [--seed N]

No PyPI package ships a small real VLM, so the tests make one: mlx-vlm's own LLaVA classes (a
CLIP vision tower, a two-layer projector, a llama language model), all tiny, with random weights;
a byte-level BPE tokenizer trained on the spot (tests/tinymodel.py's) with an ``<image>`` token;
and a real image-processor configuration (CLIP's: shortest edge 64, centre crop 64x64, CLIP's
mean and std), so every image becomes 64 image tokens. Nothing is downloaded. It needs mlx-vlm
(``pip install "mlxd[vision]"``). Seconds to build, milliseconds a token.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tinymodel import SPECIAL_TOKENS, train_tokenizer  # noqa: E402

IMAGE_TOKEN = "<image>"
IMAGE_SIDE = 64  # pixels: the crop the processor makes
PATCH = 8  # pixels: (64 / 8)^2 = 64 patches = 64 image tokens (the CLS token is dropped)
ATTENTION_SHARPEN = 4.0
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# ChatML; content may be a string or a list of parts ({"type": "text"} / {"type": "image"}), as
# Hugging Face's VLM processors hand it to their templates.
TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEXT_CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}
VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "intermediate_size": 64,
    "num_attention_heads": 4,
    "image_size": IMAGE_SIDE,
    "patch_size": PATCH,
    "projection_dim": 32,
    "layer_norm_eps": 1e-5,
}


def _tokenizer_files(path: Path):
    from tokenizers import AddedToken

    tok = train_tokenizer()
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    tok.save(str(path / "tokenizer.json"))
    eos = "<|im_end|>"
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None,
                "eos_token": eos,
                "pad_token": "<|endoftext|>",
                "unk_token": None,
                "add_bos_token": False,
                "image_token": IMAGE_TOKEN,
                "model_max_length": TEXT_CONFIG["max_position_embeddings"],
                "chat_template": TEMPLATE,
            },
            indent=2,
        )
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": eos, "pad_token": "<|endoftext|>"})
    )
    (path / "chat_template.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    return tok


def _processor_files(path: Path) -> None:
    (path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "processor_class": "LlavaProcessor",
                "do_resize": True,
                "size": {"shortest_edge": IMAGE_SIDE},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": IMAGE_SIDE, "width": IMAGE_SIDE},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": CLIP_MEAN,
                "image_std": CLIP_STD,
                "do_convert_rgb": True,
            },
            indent=2,
        )
    )
    (path / "processor_config.json").write_text(
        json.dumps(
            {
                "processor_class": "LlavaProcessor",
                "patch_size": PATCH,
                "vision_feature_select_strategy": "default",
                "image_token": IMAGE_TOKEN,
                "num_additional_image_tokens": 1,
            },
            indent=2,
        )
    )


def build_tiny_vlm(path: Path, seed: int = 0) -> Path:
    """Write the model directory; returns ``path``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models import llava

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer_files(path)
    vocab = tok.get_vocab_size()
    eos = SPECIAL_TOKENS.index("<|im_end|>")
    config = {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "image_token_index": tok.token_to_id(IMAGE_TOKEN),
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": vocab,
        "eos_token_id": eos,
        "text_config": dict(TEXT_CONFIG, vocab_size=vocab, eos_token_id=eos),
        "vision_config": VISION_CONFIG,
    }
    mx.random.seed(seed)
    model_config = llava.ModelConfig.from_dict(config)
    model_config.text_config = llava.TextConfig.from_dict(config["text_config"])
    model_config.vision_config = llava.VisionConfig.from_dict(VISION_CONFIG)
    model = llava.Model(model_config)
    # Random init gives logits too flat to say anything and image features too faint to matter:
    # widen the token embeddings and the projector's output, so greedy picks vary with the text
    # and with the image.
    lm = model.language_model.model
    proj = model.multi_modal_projector.linear_2
    model.update(
        {
            "language_model": {
                "model": {
                    "embed_tokens": {"weight": mx.random.normal(lm.embed_tokens.weight.shape)}
                }
            },
            "multi_modal_projector": {"linear_2": {"weight": proj.weight * 8.0}},
        }
    )
    # Sharper attention (scaled queries and keys) lets the last token look at particular image
    # tokens rather than at their average, which would wash the image out.
    for layer in lm.layers:
        attn = layer.self_attn
        attn.q_proj.weight = attn.q_proj.weight * ATTENTION_SHARPEN
        attn.k_proj.weight = attn.k_proj.weight * ATTENTION_SHARPEN
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    _processor_files(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="where to write the model directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    args = parser.parse_args(argv)
    print(build_tiny_vlm(Path(args.dir), args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
