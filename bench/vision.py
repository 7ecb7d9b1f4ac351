#!/usr/bin/env python3
"""What images cost: preprocessing per image, prefill per image, decode throughput of 4 image + 4
text streams against 8 text streams, and peak memory per image.

    python bench/vision.py [--model VLM_DIR] [--max-tokens 64] [--side 1024]

Without --model it builds the tiny random-weight VLM (tools/make_tiny_vlm.py). Preprocessing and
prefill are timed in-process on the loaded model; throughput through a server on port 0 (prompt
cache off, so every image is prefilled; eos suppressed with logit_bias so every stream runs its
full length).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "vision"), str(ROOT / "tools")]


def photo(side: int, seed: int, fmt: str) -> bytes:
    """A smooth 4:3 picture with some noise (compresses like a photo, unlike pure noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = side * 3 // 4, side
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def in_process(model_dir: str, side: int) -> None:
    import mlx.core as mx
    from imagedata import data_url

    from mlxd.api import images, visionchat
    from mlxd.engine import vision
    from mlxd.models import loader

    loaded = loader.load(model_dir)
    limits = images.ImageLimits()
    msgs = ({"role": "user", "content": [{"type": "text", "text": "What?"}, {"type": "image"}]},)
    for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
        url = data_url(photo(side, 0, fmt), mime)
        ref = images.ImageRef("x", url)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            prompt, vin = visionchat.prepare(
                loaded.vision, loaded.tokenizer, msgs, None, [ref], limits
            )
            times.append(time.perf_counter() - start)
        print(
            f"preprocess {fmt} {side}x{side * 3 // 4} ({len(url) >> 10} KiB as data URL): "
            f"{statistics.median(times) * 1000:.1f} ms median (fetch + decode + scale + processor)"
        )
    model = loaded.model
    text_prompt = loaded.tokenizer.encode("word " * len(prompt))[: len(prompt)]
    for label, run in (
        ("image", lambda: vision.prefill(loaded.vision.model, model, prompt, vin, None, 0, 512)),
        ("text only, same length", lambda: _text_prefill(model, text_prompt)),
    ):
        times, peaks = [], []
        for _ in range(5):
            mx.clear_cache()
            mx.reset_peak_memory()
            base = mx.get_active_memory()
            start = time.perf_counter()
            cache = run()
            mx.eval([c.state for c in cache])
            times.append(time.perf_counter() - start)
            peaks.append(mx.get_peak_memory() - base)
        print(
            f"prefill {label} ({len(prompt)} tokens, {vin.image_tokens} image tokens): "
            f"{statistics.median(times) * 1000:.1f} ms median, peak +{max(peaks) / 2**20:.2f} MiB"
        )


def _text_prefill(model, tokens):
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array(tokens[:-1])[None], cache=cache)
    return cache


def throughput(model_dir: str, max_tokens: int, side: int) -> None:
    from imagedata import data_url

    from mlxd.service.config import Config

    from helpers import ServerThread, get_json

    srv = ServerThread(Config(model=model_dir, port=0, prompt_cache_bytes=0)).start()
    _, card = get_json(srv.url + "/v1/mlx/status")
    eos = 2  # the tiny VLM's <|im_end|>; a real model: pass its eos through logit_bias likewise
    common = {"temperature": 0, "max_tokens": max_tokens, "logit_bias": {str(eos): -100}}
    text = {"messages": [{"role": "user", "content": "Tell me a story."}], **common}
    image = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe it."},
                    {
                        "type": "image_url",
                        "image_url": {"url": data_url(photo(side, 1, "JPEG"), "image/jpeg")},
                    },
                ],
            }
        ],
        **common,
    }

    def one(body):
        code, out = get_json(srv.url + "/v1/chat/completions", body, timeout=600)
        assert code == 200, out
        return out["usage"]["completion_tokens"]

    try:
        for _ in range(2):  # warm: shapes seen once
            one(image)
        for label, bodies in (("8 text", [text] * 8), ("4 image + 4 text", [image, text] * 4)):
            start = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                tokens = sum(pool.map(one, bodies))
            wall = time.perf_counter() - start
            print(
                f"{label} streams: {tokens} tokens in {wall:.2f}s = {tokens / wall:.1f} tok/s aggregate"
            )
    finally:
        srv.close()
    print(f"model: {card['model']['path']} on {card['device']['name']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a VLM directory (default: build the tiny one)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--side", type=int, default=1024, help="test image width in pixels")
    args = parser.parse_args()
    model = args.model
    if model is None:
        from make_tiny_vlm import build_tiny_vlm

        model = str(build_tiny_vlm(Path(tempfile.mkdtemp()) / "tiny-vlm"))
    in_process(model, args.side)
    throughput(model, args.max_tokens, args.side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
