"""A tiny random-weight model of another mlx-lm architecture, for spec/test_dist.sh.

    python spec/tiny_variant.py OUT_DIR MODEL_TYPE TOKENIZER_CLASS     e.g. qwen3 Qwen2Tokenizer

mlx-lm imports mlx_lm.models.MODEL_TYPE by name, and transformers imports the module of
TOKENIZER_CLASS by name: serving such a model from the frozen binary shows both were bundled.
The tokenizer and the shape come from tests/tinymodel.py (its builder makes llama only).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from tinymodel import SPECIAL_TOKENS, TINY_CONFIG, train_tokenizer, write_tokenizer  # noqa: E402


def build(out: Path, model_type: str, tokenizer_class: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    config = dict(
        TINY_CONFIG,
        model_type=model_type,
        vocab_size=tok.get_vocab_size(),
        head_dim=TINY_CONFIG["hidden_size"] // TINY_CONFIG["num_attention_heads"],
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),
    )
    arch = importlib.import_module(f"mlx_lm.models.{model_type}")
    mx.random.seed(0)
    model = arch.Model(arch.ModelArgs.from_dict(config))
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(out, tok)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = tokenizer_class
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    build(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
