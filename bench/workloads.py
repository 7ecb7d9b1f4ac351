"""Workloads beyond "N streams of distinct short prompts" (bench.py runs them after the levels):

- **shared prefix**: N streams whose prompts share one long system prompt and differ in their
  question, against the same run with a distinct system prompt of the same length per stream
  (what the shared prefix saves). Each round has system prompts no earlier round used, so only
  sharing inside the round can help, not a prompt cache warmed by an earlier round.
- **long prompts**: D streams decode; once every one of them has produced tokens, L requests with
  long prompts arrive together. The decoding streams' inter-token gaps from then on say whether
  the long prefills stalled them (p99 against p50), next to their gaps before.
"""

from __future__ import annotations

import asyncio
import time

from benchclient import chat_payload, pct, stream_chat, stream_stats, summarize

_WORDS = (
    "river stone lantern harbor meadow signal copper window orchard thunder velvet compass "
    "glacier ember willow canyon falcon marble quiet silver ancient gentle distant hidden "
    "golden restless patient hollow bright narrow measure gather wander follow carry build "
    "listen remember promise travel answer"
).split()
QUESTIONS = (
    "What is the main idea of the text above?",
    "Name three objects mentioned above.",
    "Write a short poem inspired by the text.",
    "Summarize the text in one sentence.",
    "Which word above sounds the oldest?",
    "Give the text a title.",
    "What could happen next in this story?",
    "Describe the mood of the text.",
)


def long_text(seed: int, words: int) -> str:
    """Deterministic filler text of ``words`` words, different for every seed from its first
    words on (a prompt cache can reuse nothing between two seeds)."""
    out = [f"Document {seed}."]
    state = seed * 2654435761 % 2**32 or 1
    for i in range(words):
        state = (state * 1103515245 + 12345) % 2**31
        out.append(_WORDS[state % len(_WORDS)] + ("." if i % 12 == 11 else ""))
    return " ".join(out)


def question(i: int) -> str:
    return f"Question {i}: {QUESTIONS[i % len(QUESTIONS)]}"


async def _round(port: int, messages: list[list[dict]], max_tokens: int, timeout: float) -> dict:
    t0 = time.perf_counter()
    raw = await asyncio.gather(
        *(stream_chat(port, chat_payload(m, max_tokens), timeout) for m in messages)
    )
    wall = max(r["t_end"] for r in raw) - t0
    return {"wall_s": wall, "streams": [stream_stats(r) for r in raw]}


async def shared_prefix(
    port: int, streams: int, prefix_words: int, max_tokens: int, rounds: int, timeout: float
) -> dict:
    """Shared vs distinct system prompts, ``rounds`` timed rounds each (one untimed first)."""
    out: dict = {"streams": streams, "prefix_words": prefix_words}
    for label, shared in (("distinct", False), ("shared", True)):
        timed = []
        for r in range(rounds + 1):
            seed = 10_000 * (r + 1) + (0 if shared else 5_000)
            messages = [
                [
                    {
                        "role": "system",
                        "content": long_text(seed + (0 if shared else i), prefix_words),
                    },
                    {"role": "user", "content": question(i)},
                ]
                for i in range(streams)
            ]
            result = await _round(port, messages, max_tokens, timeout)
            if r:  # the first round warms up (kernels for these shapes)
                timed.append(result)
        s = summarize(timed)
        s["prompt_tokens_p50"] = pct(
            [st["prompt_tokens"] for rd in timed for st in rd["streams"]], 50
        )
        out[label] = s
    d, sh = out["distinct"], out["shared"]
    out["ttft_ratio"] = _ratio(sh["ttft_s_p50"], d["ttft_s_p50"])
    out["aggregate_ratio"] = _ratio(sh["aggregate_tok_s"], d["aggregate_tok_s"])
    return out


async def long_prompts(
    port: int,
    decoders: int,
    decode_tokens: int,
    long_requests: int,
    long_words: int,
    max_tokens: int,
    timeout: float,
) -> dict:
    """``decoders`` streams decode ``decode_tokens`` each; once all have produced two tokens,
    ``long_requests`` prompts of ``long_words`` words arrive together."""
    lives = [dict() for _ in range(decoders)]
    dec_tasks = [
        asyncio.create_task(
            stream_chat(
                port,
                chat_payload(
                    [{"role": "user", "content": f"{i}. Tell me a very long story."}],
                    decode_tokens,
                ),
                timeout,
                lives[i],
            )
        )
        for i in range(decoders)
    ]
    deadline = time.perf_counter() + timeout
    while not all(len(x.get("content_times", ())) >= 2 for x in lives):
        if time.perf_counter() > deadline or all(t.done() for t in dec_tasks):
            break
        await asyncio.sleep(0.01)
    t_long = time.perf_counter()
    long_msgs = [
        [
            {"role": "system", "content": long_text(90_000 + i, long_words)},
            {"role": "user", "content": question(i)},
        ]
        for i in range(long_requests)
    ]
    long_raw = await asyncio.gather(
        *(stream_chat(port, chat_payload(m, max_tokens), timeout) for m in long_msgs)
    )
    dec_raw = await asyncio.gather(*dec_tasks)
    longs = [stream_stats(r) for r in long_raw]
    t_first = max((r["content_times"][0] for r in long_raw if r["content_times"]), default=t_long)
    before, during, after = [], [], []
    for r in dec_raw:
        times = r["content_times"]
        for a, b in zip(times, times[1:], strict=False):
            (before if b <= t_long else during if b <= t_first else after).append(b - a)
    return {
        "decoders": decoders,
        "decode_tokens": decode_tokens,
        "long_requests": long_requests,
        "long_words": long_words,
        "long_prompt_tokens_p50": pct([s["prompt_tokens"] for s in longs], 50),
        "long_ttft_s_p50": pct([s["ttft_s"] for s in longs], 50),
        "long_ttft_s_max": max((s["ttft_s"] or 0 for s in longs), default=None),
        "failed": sum(not r["ok"] for r in dec_raw + long_raw),
        "decoders_still_running": sum(r["t_end"] > t_first for r in dec_raw),
        "itl_before_s": _spread(before),
        "itl_during_s": _spread(during),  # while the long prompts were being prefilled
        "itl_from_arrival_s": _spread(during + after),
        "itl_all_s": _spread(before + during + after),
    }


def _spread(gaps: list[float]) -> dict:
    p50, p99 = pct(gaps, 50), pct(gaps, 99)
    return {"n": len(gaps), "p50": p50, "p99": p99, "p99_over_p50": _ratio(p99, p50)}


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None
