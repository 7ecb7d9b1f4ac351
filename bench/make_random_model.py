#!/usr/bin/env python3
"""Build a random-weight, 4-bit quantized llama model as an ordinary MLX directory, with no hub.

    python bench/make_random_model.py --shape 8b --bits 4 --tokenizer-from models/X-mlx --out DIR

The shape is llama's (mlx_lm.models.llama); the weights are MLX's default random init in bfloat16,
quantized with nn.quantize (affine, group 64 by default, like mlx_lm.convert). The tokenizer files
are copied from an existing MLX directory (e.g. the SmolLM2 export, vocab 49152) and vocab_size is
set to that tokenizer's size, so the model speaks a real tokenizer and its chat template. Output
is text-shaped noise: good for speed, meaningless to read.

Memory: MLX is lazy, so building the model allocates nothing; each transformer layer is then
quantized and evaluated on its own, so only one layer's bf16 weights exist at a time besides the
packed 4-bit result (8B: about 1 GB transient per layer, 4.5 GB in all).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

SHAPES = {
    # Llama-3-8B.
    "8b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    ),
    # Llama-3.2-1B.
    "1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    # The 8B's depth and head layout at a width a CPU steps through quickly: for what scales
    # with layers and heads (cache bookkeeping, kernel launches), not with the matmuls.
    "deep": dict(
        hidden_size=512,
        num_hidden_layers=32,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=1024,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    # Seconds to build; for tests of the plumbing.
    "tiny": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
}

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


def tokenizer_size(tok_dir: Path) -> int:
    """len(tokenizer): the base vocabulary plus added tokens, as transformers counts it."""
    try:
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(str(tok_dir)))
    except Exception:
        data = json.loads((tok_dir / "tokenizer.json").read_text())
        ids = set(data["model"]["vocab"].values())
        ids.update(t["id"] for t in data.get("added_tokens", []))
        return max(ids) + 1


def build(shape: str, bits: int, group_size: int, tok_dir: Path, out: Path, seed: int) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from mlx_lm.utils import save_config, save_model

    vocab = tokenizer_size(tok_dir)
    src_cfg = {}
    if (tok_dir / "config.json").is_file():
        src_cfg = json.loads((tok_dir / "config.json").read_text())
    s = SHAPES[shape]
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        **s,
        "head_dim": s["hidden_size"] // s["num_attention_heads"],
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "max_position_embeddings": 8192,
        "torch_dtype": "bfloat16",
    }
    for k in ("bos_token_id", "eos_token_id"):
        if k in src_cfg:
            config[k] = src_cfg[k]

    mx.random.seed(seed)
    t0 = time.perf_counter()
    args = llama.ModelArgs.from_dict(config)
    model = llama.Model(args)  # lazy: the random init is a graph, nothing allocated
    model.set_dtype(mx.bfloat16)  # still lazy; real MLX 4-bit models keep bf16 scales
    nn.quantize(model, group_size=group_size, bits=bits)  # lazy as well
    for i, layer in enumerate(model.model.layers):  # materialize one layer at a time
        mx.eval(layer.parameters())
        mx.clear_cache()
        print(f"\rlayer {i + 1}/{len(model.model.layers)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    mx.eval(model.parameters())  # embeddings, final norm, lm_head
    mx.clear_cache()
    build_s = time.perf_counter() - t0

    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    config["quantization"] = {"group_size": group_size, "bits": bits, "mode": "affine"}
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model, donate_model=True)
    save_config(config, config_path=out / "config.json")
    copied = []
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, out / name)
            copied.append(name)
    n_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return {
        "out": str(out),
        "shape": shape,
        "vocab_size": vocab,
        "bits": bits,
        "group_size": group_size,
        "build_s": round(build_s, 1),
        "weights_gb": round(n_bytes / 1e9, 2),
        "tokenizer_files": copied,
        "stored_elements": n_params,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument(
        "--tokenizer-from",
        required=True,
        help="an MLX model directory whose tokenizer files are copied",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    a = p.parse_args(argv)
    out, tok = Path(a.out), Path(a.tokenizer_from)
    if not (tok / "tokenizer.json").is_file() and not (tok / "tokenizer.model").is_file():
        p.error(f"no tokenizer.json or tokenizer.model in {tok}")
    if out.exists() and any(out.iterdir()) and not a.force:
        p.error(f"{out} exists and is not empty (use --force)")
    if out.exists() and a.force:
        shutil.rmtree(out)
    info = build(a.shape, a.bits, a.group_size, tok, out, a.seed)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
