"""MLX-side helpers for bench.py, run in their own process so the benchmark client never imports MLX
(and holds no model) while the servers are being measured.

    python bench/raw_decode.py probe
        one JSON line: device, versions, mlx_lm.server's batching defaults
    python bench/raw_decode.py raw --model DIR --messages JSON --warmup-messages JSON
                                   --max-tokens N --reps R
        one JSON line: batch-1 decode speed of plain mlx-lm (generate_step, greedy) on that prompt

Decode tok/s is measured exactly like the per-stream number bench.py takes from a server:
(tokens after the first) / (time of the last token - time of the first token), so prefill and the
first token are excluded. Generation stops at max_tokens or at an end-of-sequence token, as the
servers do.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time


def probe() -> dict:
    import mlx.core as mx
    import mlx_lm

    cuda = bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
    metal = bool(mx.metal.is_available())
    info = {
        "mlx": mx.__version__,
        "mlx_lm": getattr(mlx_lm, "__version__", "?"),
        "default_device": str(mx.default_device()),
        "backend": "cuda" if cuda else "metal" if metal else "cpu",
        "gpu": cuda or metal,
        "mlx_lm_server_defaults": _mlx_lm_server_defaults(),
        "read_bandwidth_bytes_s": _read_bandwidth(mx, 1 << 30 if cuda or metal else 1 << 28),
    }
    if cuda or metal:
        try:
            info["device_info"] = {
                k: v for k, v in mx.device_info().items() if isinstance(v, (str, int, float))
            }
        except Exception:  # older MLX: mx.metal.device_info only
            pass
    return info


def _read_bandwidth(mx, nbytes: int, reps: int = 5) -> float:
    """Bytes per second MLX reads on this device (the best of a few sums over ``nbytes``): what a
    decode step could reach at best, next to the spec sheet's peak."""
    x = mx.ones((nbytes // 4,), dtype=mx.float32)
    mx.eval(x)
    mx.eval(x.sum())  # compile
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        mx.eval(x.sum())
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def _mlx_lm_server_defaults() -> dict:
    """The batching-related defaults of this mlx_lm.server, read from its argparse source."""
    import mlx_lm.server as srv  # importing it does not start anything

    try:
        src = open(srv.__file__, encoding="utf-8").read()
    except OSError:
        return {}
    out = {}
    for flag in (
        "decode-concurrency",
        "prompt-concurrency",
        "prefill-step-size",
        "prompt-cache-size",
        "max-tokens",
    ):
        m = re.search(rf'"--{re.escape(flag)}",[^)]*?default=([^,\n)]+)', src, re.S)
        if m:
            out[flag] = m.group(1).strip()
    return out


def raw(model_dir: str, messages: list, warmup_messages: list, max_tokens: int, reps: int) -> dict:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    t0 = time.perf_counter()
    model, tokenizer = load(model_dir)
    load_s = time.perf_counter() - t0
    eos = set(tokenizer.eos_token_ids)

    def prompt_ids(msgs):
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True)

    def one(ids, n):
        start = time.perf_counter()
        times = []
        for token, _ in generate_step(mx.array(ids), model, max_tokens=n):
            tok = token if isinstance(token, int) else token.item()
            times.append(time.perf_counter())
            if tok in eos:
                break
        # generate_step may already have queued the next step: it is not counted anywhere.
        decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
        return {
            "tokens": len(times),
            "ttft_s": times[0] - start,
            "decode_tok_s": decode,
            "total_s": times[-1] - start,
        }

    warm = one(prompt_ids(warmup_messages), max(8, min(max_tokens, 32)))
    ids = prompt_ids(messages)
    runs = [one(ids, max_tokens) for _ in range(reps)]
    decodes = [r["decode_tok_s"] for r in runs if r["decode_tok_s"]]
    from mlx.utils import tree_flatten

    return {
        "load_s": load_s,
        "weight_bytes": sum(p.nbytes for _, p in tree_flatten(model.parameters())),
        "prompt_tokens": len(ids),
        "warmup": warm,
        "runs": runs,
        "decode_tok_s": statistics.median(decodes) if decodes else None,
        "ttft_s": statistics.median(r["ttft_s"] for r in runs),
        "tokens": runs[0]["tokens"],
        "memory": {"mlx_peak_bytes": mx.get_peak_memory(), "rss_peak_bytes": _rss_peak_bytes()},
    }


def _rss_peak_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("probe")
    r = sub.add_parser("raw")
    r.add_argument("--model", required=True)
    r.add_argument("--messages", required=True)
    r.add_argument("--warmup-messages", required=True)
    r.add_argument("--max-tokens", type=int, required=True)
    r.add_argument("--reps", type=int, default=2)
    a = p.parse_args(argv)
    if a.cmd == "probe":
        out = probe()
    else:
        out = raw(
            a.model, json.loads(a.messages), json.loads(a.warmup_messages), a.max_tokens, a.reps
        )
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
