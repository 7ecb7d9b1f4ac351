"""Shared prefixes: requests that begin like a running one start from its cache. Asserted by the
engine's counters (prompt tokens computed, starts from a shared cache), never by timing."""

from __future__ import annotations

import time

import pytest
from test_batching import Run

from mlxd.engine.loop import Engine, EngineSettings
from mlxd.engine.prefix import MIN_SHARED_TOKENS, Source, common_prefix, find_source

PREFIX = [(11 * i) % 350 + 3 for i in range(120)]  # a "system prompt" longer than the minimum
TAILS = [[5, 6, 7, 8], [40, 41, 42], [100, 3, 4, 9, 9], [17, 18, 19]]


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_prefix([], [1]) == 0
    a = list(range(1000))
    for n in (0, 1, 499, 999):
        b = a[:n] + [-1] + a[n + 1 :]
        assert common_prefix(a, b) == n


def test_find_source_prefers_the_longest_and_the_ready():
    prompt = PREFIX + [1, 2, 3]
    running = {
        1: (PREFIX[:100] + [9], True),
        2: (PREFIX + [7], False),  # shares 120, still prefilling
        3: (PREFIX + [8], True),  # shares 120, ready
    }
    assert find_source(prompt, 0, running) == Source(3, 120, True)
    del running[3]
    assert find_source(prompt, 0, running) == Source(2, 120, False)
    # the prompt cache already gives most of it: nothing worth a wait
    assert find_source(prompt, 100, running) is None
    # a leader whose own remaining prompt is longer than what would be saved is not followed
    long_leader = {4: (PREFIX[:MIN_SHARED_TOKENS] + [0] * 500, False)}
    assert find_source(PREFIX[:MIN_SHARED_TOKENS] + [1, 2], 0, long_leader) is None
    assert find_source([1, 2, 3] + PREFIX, 0, {5: (PREFIX, True)}) is None


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))


def _engine(model, tokenizer, **settings) -> Engine:
    eng = Engine(model, tokenizer, EngineSettings(prompt_cache_bytes=0, **settings))
    eng.start()
    assert eng.ready.wait(60)
    return eng


def test_shared_prefix_is_prefilled_once_and_tails_together(loaded):
    """Four requests with one 120-token prefix, submitted together (the prompt cache is off, so
    only the running sequences can share): the same greedy text as each alone, the prefix
    computed once."""
    model, tokenizer = loaded
    eng = _engine(model, tokenizer)
    try:
        alone = [Run(eng, PREFIX + t, max_tokens=10).result()["text"][0] for t in TAILS]
        assert eng.stats.shared_starts == 0  # one at a time: nothing running to share with
        before = eng.stats.prompt_tokens
        runs = [Run(eng, PREFIX + t, max_tokens=10) for t in TAILS]
        together = [r.result()["text"][0] for r in runs]
        computed = eng.stats.prompt_tokens - before
    finally:
        eng.shutdown(5)
    assert together == alone
    assert eng.stats.shared_starts == len(TAILS) - 1
    # the prefix once, every tail (and the token before each tail, recomputed for its logits)
    assert computed <= len(PREFIX) + sum(len(t) + 1 for t in TAILS)


def test_a_follower_whose_leader_is_cancelled_starts_on_its_own(loaded):
    model, tokenizer = loaded
    from helpers import SlowModel

    eng = _engine(SlowModel(model, 0.01), tokenizer, prefill_step_size=16, solo=False)
    try:
        leader = Run(eng, PREFIX + TAILS[0], max_tokens=5)
        follower = Run(eng, PREFIX + TAILS[1], max_tokens=5)
        time.sleep(0.03)
        leader.job.cancel()
        out = follower.result()
        assert out["failed"] is None and out["finished"][0].completion_tokens == 5
    finally:
        eng.shutdown(5)


def test_n_choices_still_share_their_prompt(loaded):
    model, tokenizer = loaded
    eng = _engine(model, tokenizer)
    try:
        before = eng.stats.prompt_tokens
        out = Run(eng, PREFIX + TAILS[0], max_tokens=6, n=3).result()
    finally:
        eng.shutdown(5)
    assert len(out["finished"]) == 3 and len(set(out["text"].values())) == 1  # greedy: equal
    assert eng.stats.prompt_tokens - before <= len(PREFIX) + len(TAILS[0]) + 2 * 1
