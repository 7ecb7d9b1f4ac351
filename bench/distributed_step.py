#!/usr/bin/env python3
"""Where a group's decode step goes: compute vs collectives, per batch size.

    mlx.launch --backend nccl -n 2 --hosts 127.0.0.1 --python python3 -- \\
        bench/distributed_step.py --model DIR --backend nccl --out OUT.json
    python bench/distributed_step.py --model DIR --modes one --out OUT.json   # one device

Within one launch it measures each of ``--modes`` (tensor; tensor-bf16: tensor with MLX's own
sums, the partial products rounded to the model's dtype before the all_sum, where mlxd sums in
float32; pipeline; then one: rank 0 alone with the whole model) in each of ``--weights``
(quantized, dense), and says for how many of the ``--greedy`` tokens after a fixed prompt (text) each
mode agrees with one device.

Each rank loads its share the way mlxd does (``mlxd.models.shard``), fills a KV cache of
``--context`` tokens for B sequences, then times ``--steps`` synchronous decode steps (forward,
argmax, eval) twice: with the real collectives, then with them replaced by no-ops, which leaves
each rank's own compute. Tensor parallel: collectives = step - compute (the two ``all_sum`` per
layer). Pipeline: the ranks run one after the other, so communication and waiting = step - the
sum of the ranks' compute (the ``all_sum`` that hands each stage's output on).
One device: the whole model's step, for reference. Rank 0 writes the JSON (after each
measurement, so a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import dequantize_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlxd.models import loader, shard  # noqa: E402
from mlxd.models.group import join  # noqa: E402
from mlxd.service import ranks  # noqa: E402

REAL = {
    name: getattr(mx.distributed, name) for name in ("all_sum", "all_gather", "send", "recv_like")
}
NO_COMM = {
    "all_sum": lambda x, **_kw: x,
    "all_gather": lambda x, **_kw: x,
    "send": lambda x, *_a, **_kw: x,
    "recv_like": lambda x, *_a, **_kw: x,
}


def prefill(model, prompt: mx.array) -> tuple[list, float]:
    """A fresh KV cache filled with ``prompt`` (B x context tokens), and the seconds it took."""
    t = time.perf_counter()
    cache = make_prompt_cache(model)
    mx.eval(model(prompt, cache=cache)[:, -1, :], [c.state for c in cache])
    return cache, time.perf_counter() - t


def step_time(model, batch: int, context: int, steps: int, warmup: int) -> tuple[float, float]:
    """The median decode step and the second of two prefills of B x context tokens (the first
    one compiles)."""
    vocab = model.args.vocab_size
    prompt = mx.random.randint(0, vocab, (batch, context))
    prefill(model, prompt)
    cache, prefill_s = prefill(model, prompt)
    y = mx.random.randint(0, vocab, (batch, 1))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        y = mx.argmax(model(y, cache=cache)[:, -1, :], axis=-1, keepdims=True)
        mx.eval(y)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], prefill_s  # median: one slow step must not skew it


# A real model's greedy tokens after special tokens 1..32 loop on two tokens (SmolLM2: 26, 27,
# 26, 27, ...), which any split reproduces: text makes the check say something.
GREEDY_TEXT = "The history of the printing press in Europe begins in Mainz, where"


def greedy_prompt(model_dir: str) -> mx.array:
    """The fixed prompt's tokens: ``GREEDY_TEXT`` where the model has a tokenizer, else 1..32."""
    try:
        from mlx_lm.utils import load_tokenizer

        return mx.array(load_tokenizer(Path(model_dir)).encode(GREEDY_TEXT))[None]
    except Exception:  # noqa: BLE001 - no tokenizer files: any fixed tokens will do
        return mx.arange(1, 33)[None]


def greedy(model, tokens: int, prompt: mx.array) -> list[int]:
    """``tokens`` greedy tokens after ``prompt``: one device and a group must agree."""
    cache = make_prompt_cache(model)
    y = prompt
    out = []
    for _ in range(tokens):
        y = mx.argmax(model(y, cache=cache)[:, -1, :], axis=-1, keepdims=True)
        out.append(y.item())
    return out


def load(a, group, weights: str, wide_sums: bool):
    if group is not None:
        return shard.load_shard(a.model, group, weights, wide_sums=wide_sums).model
    model = loader.load(a.model).model
    return dequantize_model(model) if weights == "dense" else model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--backend", help="join a group over it (under mlx.launch)")
    p.add_argument("--modes", default="tensor,tensor-bf16,pipeline,one", help="'one': rank 0 alone")
    p.add_argument("--batches", default="1,32,64")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--weights", default="quantized,dense")
    p.add_argument("--greedy", type=int, default=64, help="greedy tokens recorded per format")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    group = None
    if a.backend:
        expected = ranks.expected_size(a.backend, os.environ)
        group = join(a.backend, pipeline=False, expected=expected, step_timeout=60)
    out: dict = {"backend": a.backend, "context": a.context, "rows": [], "greedy_tokens": {}}
    prompt = greedy_prompt(a.model)
    for mode in a.modes.split(","):
        split = mode.removesuffix("-bf16")
        here = None if mode == "one" else dataclasses.replace(group, mode=split)
        if here is None and group is not None and not group.leader:
            continue  # one device: rank 0's alone
        for weights in a.weights.split(","):
            model = load(a, here, weights, wide_sums=split == mode)
            tokens = greedy(model, a.greedy, prompt)
            rows = gather(measure(model, a, here), here)
            del model
            mx.clear_cache()
            out["greedy_tokens"][f"{mode} {weights}"] = tokens
            out["rows"] += [{"mode": mode, "weights": weights, **r} for r in rows]
            show(mode, weights, rows, tokens)
            if group is None or group.leader:
                out["agreement"] = agreement(out["greedy_tokens"])
                Path(a.out).write_text(json.dumps(out, indent=1))
    for line in agreement(out["greedy_tokens"]):
        print(line, flush=True)
    return 0


def agreement(tokens: dict[str, list[int]]) -> list[str]:
    """Each group mode's greedy tokens against one device's in the same weights."""
    lines = []
    for key, mine in tokens.items():
        mode, weights = key.split(" ")
        base = tokens.get(f"one {weights}")
        if mode == "one" or base is None:
            continue
        first = next((i for i, (x, y) in enumerate(zip(mine, base, strict=True)) if x != y), None)
        lines.append(
            f"greedy {key} vs one {weights}: "
            + ("identical" if first is None else f"first difference at token {first}")
            + f" ({len(base)} tokens)"
        )
    return lines


def measure(model, a, group) -> list[dict]:
    rows = []
    for b in [int(x) for x in a.batches.split(",")]:
        real, fill = step_time(model, b, a.context, a.steps, a.warmup)
        for name, fn in NO_COMM.items():
            setattr(mx.distributed, name, fn)
        try:
            alone = step_time(model, b, a.context, a.steps, a.warmup)[0] if group else real
        finally:
            for name, fn in REAL.items():
                setattr(mx.distributed, name, fn)
        rows.append(
            {
                "batch": b,
                "context": a.context,
                "step_s": real,
                "compute_s": alone,
                "prefill_s": fill,
            }
        )
    return rows


def gather(rows: list[dict], group) -> list[dict]:
    """Every rank's compute, on every rank; collectives = step - compute (see the top)."""
    if group is None:
        return rows
    mine = mx.array([r["compute_s"] for r in rows])
    every = mx.distributed.all_gather(mine[None], group=group.handle)
    mx.eval(every)
    for i, r in enumerate(rows):
        r["compute_s_per_rank"] = [float(x) for x in every[:, i].tolist()]
        per_rank = r["compute_s_per_rank"]
        compute = sum(per_rank) if group.mode == "pipeline" else max(per_rank)
        r["comm_s"] = r["step_s"] - compute
    return rows


def show(mode: str, weights: str, rows: list[dict], tokens: list[int]) -> None:
    for r in rows:
        extra = f", collectives {r['comm_s'] * 1e3:.2f} ms" if "comm_s" in r else ""
        print(
            f"{mode} {weights}: batch {r['batch']}: step {r['step_s'] * 1e3:.2f} ms "
            f"({r['batch'] / r['step_s']:.0f} tok/s), compute {r['compute_s'] * 1e3:.2f} ms{extra}; "
            f"prefill of {r['batch']}x{r['context']} {r['prefill_s'] * 1e3:.1f} ms",
            flush=True,
        )
    print(f"{mode} {weights}: greedy {tokens}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
