#!/usr/bin/env python3
"""The cost of constrained decoding: engine step time, free vs JSON-schema constrained, at
batch 1 and batch 8, on one model, in-process (no HTTP).

    python bench/structured_overhead.py [--model DIR|FILE.gguf] [--max-tokens 96] [--rounds 3]
                                        [--batches 1,8]

Without --model it builds the tiny random-weight test model. The model is wrapped so that every
forward pass is timed from the previous one: the gap between two decode passes over the same B
rows is one whole engine step (forward, logits processors, sampling, bookkeeping). Only steps
with exactly B rows in flight count, so sequences that end early do not skew the numbers. The
constraint runs as the server runs it (``enforce.processor`` through ``SamplingParams``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "characters": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
                "additionalProperties": False,
            },
        },
        "story": {"type": "string"},
    },
    "required": ["title", "characters", "story"],
    "additionalProperties": False,
}
TOPICS = [
    "a lighthouse",
    "a lost cat",
    "a robot chef",
    "the moon",
    "a desert town",
    "a violin",
    "an old map",
    "a winter train",
]


class StepClock:
    """Times each forward pass from the one before; keeps decode passes by batch width."""

    def __init__(self, model) -> None:
        self._model, self.steps, self._last = model, {}, None

    def __call__(self, inputs, *args, **kwargs):
        now = time.perf_counter()
        if inputs.shape[1] == 1 and self._last is not None and self._last[1] == inputs.shape[0]:
            self.steps.setdefault(inputs.shape[0], []).append(now - self._last[0])
        self._last = (now, inputs.shape[0]) if inputs.shape[1] == 1 else None
        return self._model(inputs, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def run_batch(engine, tokenizer, batch: int, params, constrained_factory) -> list[str]:
    """Runs ``batch`` jobs at once; their texts."""
    from mlxd.engine.loop import Job

    done = threading.Semaphore(0)
    texts = [[] for _ in range(batch)]

    def emit(ev, i):
        if type(ev).__name__ == "Delta":
            texts[i].append(ev.text)
        if type(ev).__name__ in ("Finished", "Failed"):
            done.release()

    for i in range(batch):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Write a long story about {TOPICS[i]}, as JSON."}],
            add_generation_prompt=True,
        )
        p = (
            params
            if constrained_factory is None
            else dataclasses.replace(params, constraint=constrained_factory)
        )
        engine.submit(Job(list(prompt), p, functools.partial(emit, i=i)))
    for _ in range(batch):
        done.acquire()
    return ["".join(t) for t in texts]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    args = ap.parse_args()

    from mlxd.constrain.enforce import Enforce, processor
    from mlxd.constrain.index import TokenVocabulary
    from mlxd.constrain.json_schema import compile_schema, validate
    from mlxd.engine.loop import Engine, EngineSettings
    from mlxd.engine.sampling import SamplingParams
    from mlxd.models import loader as models

    path = args.model
    if path is None:
        from tinymodel import build_tiny_model

        path = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny-llama")
    loaded = models.load(path)
    tok = loaded.tokenizer
    clock = StepClock(loaded.model)
    engine = Engine(clock, tok, EngineSettings(max_batch_size=8, prompt_cache_bytes=0))
    engine.start()
    engine.ready.wait()
    vocab = TokenVocabulary.for_tokenizer(tok)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    factory = functools.partial(
        processor,
        Enforce(compile_schema(SCHEMA)),
        vocab,
        tuple(sorted(tok.eos_token_ids)),
        args.max_tokens,
    )
    print(
        f"model {loaded.name}, vocabulary {len(tok)}, max_tokens {args.max_tokens}, "
        f"{args.rounds} rounds"
    )
    print(
        f"{'batch':>5} {'free ms/step':>13} {'json ms/step':>13} {'overhead/step':>14} "
        f"{'overhead/token':>15} {'steps':>9}"
    )
    outputs: list[str] = []
    for batch in (int(b) for b in args.batches.split(",")):
        result = {}
        for mode, make in (("free", None), ("json", factory)):
            run_batch(engine, tok, batch, params, make)  # warm: masks, leaf tables
            clock.steps.clear()
            for _ in range(args.rounds):
                texts = run_batch(engine, tok, batch, params, make)
                if make is not None:
                    for text in texts:
                        validate(json.loads(text), SCHEMA)  # max_tokens leaves room
                    outputs.extend(texts)
            result[mode] = list(clock.steps.get(batch, []))
        free, json_ = (statistics.median(result[m]) * 1e3 for m in ("free", "json"))
        print(
            f"{batch:>5} {free:>13.2f} {json_:>13.2f} {json_ - free:>+14.2f} "
            f"{(json_ - free) / batch:>+15.3f} "
            f"{len(result['free']):>4}/{len(result['json']):<4}"
        )
    engine.shutdown(10)
    print(
        f"constraint alone (advance + mask per token, replaying the {len(outputs)} answers): "
        f"{replay_us(outputs, tok, vocab):.1f} us/token"
    )
    return 0


def replay_us(texts: list[str], tok, vocab) -> float:
    """Python-side cost of one sequence's constraint per token, its masks already cached."""
    import mlx.core as mx

    from mlxd.constrain.index import Constraint
    from mlxd.constrain.json_schema import compile_schema

    grammar, eos = compile_schema(SCHEMA), sorted(tok.eos_token_ids)
    runs = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = len(tok)
    total, count = 0.0, 0
    for _ in range(2):  # the first pass fills the caches; the second is timed
        total, count = 0.0, 0
        for ids in runs:
            c = Constraint(grammar, vocab, eos)  # no squeeze: re-encoding may differ
            start = time.perf_counter()
            for t in ids:
                mx.eval(c.mask(width))
                c.advance(t)
            total += time.perf_counter() - start
            count += len(ids)
    return total / max(count, 1) * 1e6


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # skip interpreter teardown under a live MLX thread pool
