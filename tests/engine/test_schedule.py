"""Chunked prefill: the per-step budget, how it is cut into rows and chunks, and the schedule an
engine actually runs (which forward passes, in which order; never how long they took)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from test_batching import Run

from mlxd.engine import loop, schedule
from mlxd.engine.loop import Engine, EngineSettings
from mlxd.engine.schedule import Pacer, StepBudget, StepPlan, plan


def test_plan_prefills_a_burst_of_short_prompts_together():
    assert plan(4096, [40] * 64, 0, 512, 64) == StepPlan(64, 64)
    assert plan(4096, [40] * 64, 0, 512, 16) == StepPlan(16, 256)  # --prefill-batch-size


def test_plan_gives_long_prompts_the_budget_first_come_first_served():
    assert plan(512, [1500] * 16, 0, 1024, 64) == StepPlan(1, 512)
    assert plan(4096, [1500] * 16, 0, 1024, 64) == StepPlan(4, 1024)


def test_plan_keeps_the_rows_already_prefilling():
    # mlx-lm advances every row of its prefill batch each step: three started, three rows.
    assert plan(300, [1000, 1000, 1000, 5], 3, 512, 64) == StepPlan(3, 100)
    # a short prompt behind a long one joins when it adds more than it costs the chunk
    assert plan(512, [600, 10, 10], 1, 512, 64) == StepPlan(1, 512)
    assert plan(512, [100, 10, 10], 1, 512, 64) == StepPlan(3, 170)


def test_piece_sizes_are_few():
    sizes = {schedule.piece_size(n) for n in range(1, 4097)}
    assert len(sizes) == 7 + 4 * 9 + 1  # 1-7, four per octave from 8 to 2048, 4096
    for n in range(1, 4097):
        size = schedule.piece_size(n)
        assert size <= n and size > n * 3 // 4  # never more than asked, at most a quarter less
    assert [schedule.piece_size(n) for n in (7, 8, 9, 75, 98, 100, 512, 700)] == [
        7,
        8,
        8,
        64,
        96,
        96,
        512,
        640,
    ]


def test_plan_cuts_pieces_of_those_sizes_on_cuda():
    # the budget cuts the prompt: the piece is a size of the table
    assert plan(300, [1000, 1000, 1000, 5], 3, 512, 64, pieces=True) == StepPlan(3, 96)
    # a tail that fits, while streams decode: a piece of a size, the rest in later steps
    assert plan(200, [87], 1, 512, 64, pieces=True, throttled=True) == StepPlan(1, 80)
    assert plan(200, [7], 1, 512, 64, pieces=True, throttled=True) == StepPlan(1, 7)
    # with nothing decoding, a burst's short prompts go whole, padded to the longest
    assert plan(4096, [40, 33] * 8, 0, 512, 64, pieces=True) == StepPlan(16, 256)
    # and without pieces (CPU, Metal) the chunk is whatever the budget allows
    assert plan(200, [87], 1, 512, 64, throttled=True) == StepPlan(1, 200)


def test_throttled_plan_leaves_at_most_one_prompt_unfinished():
    # mlx-lm advances every started row each step: a long prompt started beside an unfinished
    # one would split every later step with it
    assert plan(32, [24, 600], 1, 512, 64, throttled=True) == StepPlan(1, 32)
    assert plan(32, [24, 600], 1, 512, 64) == StepPlan(2, 16)  # a burst: rows fill the budget
    # one that finishes within the step may go beside the unfinished one
    assert plan(32, [10, 600], 1, 512, 64, throttled=True) == StepPlan(2, 16)
    # short prompts that all finish still go together
    assert plan(200, [40] * 5, 0, 512, 64, throttled=True) == StepPlan(5, 40)
    # rows mlx-lm already advances stay, unfinished or not
    assert plan(300, [1000, 1000, 1000, 5], 3, 512, 64, throttled=True) == StepPlan(3, 100)


def test_fixed_budget_counts_decode_tokens():
    budget = StepBudget(fixed=64)
    assert budget.prefill_tokens(decoding=10, waiting=1) == 54
    assert budget.prefill_tokens(decoding=60, waiting=1) == schedule.MIN_PREFILL_TOKENS


def test_adaptive_budget_is_open_when_nothing_needs_protecting():
    budget = StepBudget()
    assert budget.prefill_tokens(decoding=0, waiting=3) == schedule.UNTHROTTLED_TOKENS
    assert budget.prefill_tokens(decoding=2, waiting=3) == schedule.UNTHROTTLED_TOKENS
    assert budget.prefill_tokens(decoding=8, waiting=3) == schedule.START_TOKENS
    cpu = StepBudget(start=schedule.CPU_START_TOKENS)  # a CPU starts at the bottom
    assert cpu.prefill_tokens(decoding=8, waiting=3) == schedule.MIN_PREFILL_TOKENS


def test_adaptive_budget_converges_to_the_target_ratio():
    """Made-up device: a decode step takes 10 ms; a prefill forward 2 ms + 0.05 ms per token.
    A step that prefills settles near TARGET_STEP_RATIO decode steps (25 ms: 260 tokens)."""
    budget = StepBudget()
    decode = 0.010
    for _ in range(5):
        budget.observe(decode, decoding=8, prefilled=0, budget=0)
    for _ in range(60):
        tokens = budget.prefill_tokens(decoding=8, waiting=1)
        budget.observe(decode + 0.002 + tokens * 0.00005, 8, tokens, tokens)
    tokens = budget.prefill_tokens(decoding=8, waiting=1)
    assert (decode + 0.002 + tokens * 0.00005) / decode == pytest.approx(
        schedule.TARGET_STEP_RATIO, rel=0.05
    )


def test_adaptive_budget_bottoms_out_where_a_prefill_costs_a_decode_step_and_more():
    budget = StepBudget()
    budget.observe(0.010, 8, 0, 0)
    for _ in range(60):
        tokens = budget.prefill_tokens(8, 1)
        budget.observe(0.010 + 0.016 + tokens * 0.00005, 8, tokens, tokens)
    assert budget.prefill_tokens(8, 1) == schedule.MIN_PREFILL_TOKENS


def test_one_slow_decode_step_does_not_open_the_budget():
    budget = StepBudget()
    for seconds in [0.010] * 8 + [0.250]:  # a batch joined or a cache grew
        budget.observe(seconds, 8, 0, 0)
    assert budget.decode_s == pytest.approx(0.010)
    budget.observe(0.300, 8, 0, 0, joined=5)  # steps where sequences joined are not samples
    assert budget.decode_s == pytest.approx(0.010)


def test_an_outlier_prefill_step_does_not_shrink_the_budget():
    """A first-use compile makes one step ten times slower per token: the budget learnt from
    the steps before stays; a device that is slow at every step still teaches it."""
    budget = StepBudget()
    budget.observe(0.010, 8, 0, 0)

    def steady(n: int, per_token: float) -> None:
        for _ in range(n):
            tokens = budget.prefill_tokens(8, 1)
            budget.observe(0.010 + tokens * per_token, 8, tokens, tokens)

    steady(30, 0.00005)
    learnt = budget.prefill_tokens(8, 1)
    budget.observe(0.010 + learnt * 0.0005, 8, learnt, learnt)  # ten times the cost
    assert budget.prefill_tokens(8, 1) == learnt
    steady(40, 0.0005)  # the device really is that slow now: the budget follows
    assert budget.prefill_tokens(8, 1) < learnt / 5


def test_adaptive_budget_grows_where_prefill_is_cheap():
    budget = StepBudget()
    budget.observe(0.010, 8, 0, 0)
    for _ in range(30):
        tokens = budget.prefill_tokens(8, 1)
        budget.observe(0.010 + tokens * 0.00001, 8, tokens, tokens)
    assert budget.prefill_tokens(8, 1) == pytest.approx(1500, rel=0.1)  # 15 ms of tokens


def _progress(uid, done, total, end=False):
    return SimpleNamespace(uid=uid, progress=(done, total), end_of_prompt=end)


def test_pacer_follows_the_progress_reports():
    pacer = Pacer(StepBudget(fixed=40), chunk_cap=512, max_rows=8)
    gen = SimpleNamespace(prefill_batch_size=0, prefill_step_size=0)
    pacer.add(0, 3)  # decoding soon
    pacer.add(1, 101)  # 100 to prefill
    pacer.before(gen)  # nothing decodes yet: 40 tokens, both rows
    assert (gen.prefill_batch_size, gen.prefill_step_size) == (2, 20)
    assert pacer.after([_progress(0, 2, 3), _progress(1, 20, 101)], 0.01) == 40
    pacer.before(gen)  # row 0 finished its prompt: it still holds a place this step
    assert (gen.prefill_batch_size, gen.prefill_step_size) == (2, 40)
    pacer.after([_progress(0, 3, 3, end=True), _progress(1, 60, 101)], 0.01)
    assert pacer.decoding(0) and not pacer.decoding(1)
    pacer.before(gen)  # one stream decodes: 39 prompt tokens
    assert (gen.prefill_batch_size, gen.prefill_step_size) == (1, 39)


class Recorder:
    """A model that logs each forward pass's (batch, tokens) in order."""

    def __init__(self, model, delay: float = 0.0) -> None:
        self._model, self._delay, self.calls = model, delay, []

    def __call__(self, inputs, *args, **kwargs):
        self.calls.append(tuple(inputs.shape))
        time.sleep(self._delay)
        return self._model(inputs, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


LONG = [(7 * i) % 300 + 3 for i in range(150)]


@pytest.mark.parametrize("pieces", [False, True], ids=["any-length", "cuda-piece-sizes"])
def test_a_long_prompt_is_cut_to_fit_beside_running_streams(loaded, pieces, monkeypatch):
    """--max-step-tokens 40 with two streams decoding: the long prompt comes in chunks of at
    most 38 tokens, each step still decodes the running streams, and its greedy output is the
    one it gets alone; with CUDA's piece sizes (forced here) every chunk is one of them."""
    if pieces:
        monkeypatch.setattr(loop, "Pacer", lambda *a, **k: Pacer(*a, **{**k, "pieces": True}))
    model, tokenizer = loaded
    alone_engine = Engine(model, tokenizer, EngineSettings(prompt_cache_bytes=0))
    alone_engine.start()
    try:
        assert alone_engine.ready.wait(60)
        alone = Run(alone_engine, LONG, max_tokens=8).result()["text"][0]
    finally:
        alone_engine.shutdown(5)

    recorder = Recorder(model, delay=0.002)
    settings = EngineSettings(max_step_tokens=40, prompt_cache_bytes=0, solo=False)
    eng = Engine(recorder, tokenizer, settings)
    eng.start()
    try:
        assert eng.ready.wait(60)
        streams = [Run(eng, [5 + i, 6, 7], max_tokens=60) for i in range(2)]
        while not all(s.events.qsize() for s in streams):
            time.sleep(0.005)
        recorder.calls.clear()
        long = Run(eng, LONG, max_tokens=8)
        assert long.result()["text"][0] == alone
        calls = list(recorder.calls)
        for s in streams:
            assert s.result()["failed"] is None
    finally:
        eng.shutdown(5)
    prefills = [i for i, (_b, n) in enumerate(calls) if n > 1]
    assert len(prefills) >= len(LONG) // 38  # cut into chunks
    assert all(b * n <= 40 - 2 for b, n in (calls[i] for i in prefills))
    for a, b in zip(prefills, prefills[1:], strict=False):  # a decode step between two chunks
        assert any(calls[i] == (2, 1) for i in range(a + 1, b)), calls[a : b + 1]
    if pieces:
        widths = {calls[i][1] for i in prefills}
        assert all(schedule.piece_size(n) == n for n in widths), widths


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))
