"""Continuous batching on the tiny model: correctness inside a batch, admission, cancellation,
prompt cache, per-request sampling."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from mlxd.api.errors import http_error
from mlxd.engine.errors import EngineError
from mlxd.engine.events import Delta, Failed, Finished
from mlxd.engine.loop import Engine, EngineSettings, Job
from mlxd.engine.sampling import SamplingParams

from helpers import SlowModel


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))


def make_engine(loaded, delay: float = 0.0, **settings) -> Engine:
    model, tokenizer = loaded
    eng = Engine(SlowModel(model, delay) if delay else model, tokenizer, EngineSettings(**settings))
    eng.start()
    assert eng.ready.wait(60)
    return eng


@pytest.fixture(scope="module")
def engine(loaded):
    eng = make_engine(loaded, max_batch_size=8)
    yield eng
    eng.shutdown(5)


class Run:
    """A submitted job and its events, collected on a plain queue."""

    def __init__(self, engine, prompt, **params) -> None:
        self.events: queue.Queue = queue.Queue()
        self.params = SamplingParams(**{"max_tokens": 16, "temperature": 0.0, **params})
        self.job = Job(list(prompt), self.params, self.events.put)
        engine.submit(self.job)

    def result(self, timeout=60) -> dict:
        out = {"text": {}, "finished": {}, "logprobs": {}, "failed": None}
        open_choices = self.params.n
        while open_choices:
            ev = self.events.get(timeout=timeout)
            if isinstance(ev, Delta):
                out["text"][ev.index] = out["text"].get(ev.index, "") + ev.text
                out["logprobs"].setdefault(ev.index, []).extend(ev.logprobs)
            elif isinstance(ev, Finished):
                out["finished"][ev.index] = ev
                open_choices -= 1
            elif isinstance(ev, Failed):
                out["failed"] = http_error(ev.error)
                return out
        return out


PROMPTS = [[5, 6, 7], [40, 41, 42, 43, 44], [100, 3], [9] * 30, [200, 201, 202, 203], [17, 18]]


def test_batched_greedy_matches_solo(engine):
    solo = [Run(engine, p).result()["text"].get(0, "") for p in PROMPTS]
    runs = [Run(engine, p) for p in PROMPTS]
    batched = [r.result()["text"].get(0, "") for r in runs]
    assert batched == solo


def test_seed_gives_same_text_alone_and_in_a_batch(engine):
    seeded = dict(temperature=1.0, seed=1234, max_tokens=20)
    alone = Run(engine, [11, 12, 13], **seeded).result()["text"][0]
    others = [Run(engine, p, temperature=1.0) for p in PROMPTS]
    in_batch = Run(engine, [11, 12, 13], **seeded)
    assert in_batch.result()["text"][0] == alone
    for r in others:
        r.result()
    different = Run(engine, [11, 12, 13], **{**seeded, "seed": 99}).result()["text"][0]
    assert different != alone


def test_n_choices_share_one_prefill(engine):
    prompt = list(range(20, 60))
    res = Run(engine, prompt, n=3, temperature=1.0, seed=5, max_tokens=12).result()
    assert sorted(res["finished"]) == [0, 1, 2]
    assert len({res["text"].get(i, "") for i in range(3)}) > 1  # seeds 5, 6, 7 differ
    # Choices 1 and 2 start from choice 0's cache: only the last prompt token is recomputed.
    assert all(res["finished"][i].cached_tokens >= len(prompt) - 1 for i in (1, 2))
    greedy = Run(engine, prompt, n=2, max_tokens=8).result()
    assert greedy["text"].get(0) == greedy["text"].get(1)


def test_prompt_cache_reuses_a_shared_prefix(engine):
    prefix = list(range(300, 340))
    first = Run(engine, prefix + [1, 2], max_tokens=4).result()
    assert first["finished"][0].cached_tokens == 0
    second = Run(engine, prefix + [3, 4], max_tokens=4).result()
    assert second["finished"][0].cached_tokens >= len(prefix)
    again = Run(engine, prefix + [1, 2], max_tokens=4).result()
    assert again["text"] == first["text"]
    assert engine.prompt_cache_nbytes() > 0


def test_logprobs_are_sorted_and_match_greedy_choice(engine):
    res = Run(engine, [5, 6, 7], logprobs=3, max_tokens=6).result()
    lps = res["logprobs"][0]
    assert len(lps) == res["finished"][0].completion_tokens
    for lp in lps:
        assert lp.logprob <= 0 and len(lp.top) == 3
        values = [v for _, v in lp.top]
        assert values == sorted(values, reverse=True)
        assert lp.top[0][0] == lp.token  # greedy picks the most likely token


def test_logit_bias_steers_greedy_choice(engine):
    base = Run(engine, [5, 6, 7], max_tokens=1, logprobs=0).result()["logprobs"][0][0].token
    banned = (
        Run(engine, [5, 6, 7], max_tokens=1, logprobs=0, logit_bias={base: -100.0})
        .result()["logprobs"][0][0]
        .token
    )
    assert banned != base
    forced = Run(engine, [5, 6, 7], max_tokens=5, logprobs=0, logit_bias={150: 100.0}).result()
    assert [lp.token for lp in forced["logprobs"][0]] == [150] * 5


def test_frequency_penalty_discourages_repeats(engine):
    forced = dict(max_tokens=6, logprobs=0, logit_bias={150: 8.0, 151: 7.9})
    plain = [lp.token for lp in Run(engine, [5], **forced).result()["logprobs"][0]]
    assert plain.count(150) > 3
    penalised = [
        lp.token for lp in Run(engine, [5], frequency_penalty=2.0, **forced).result()["logprobs"][0]
    ]
    assert penalised.count(150) < plain.count(150)


def test_queue_full_is_429_and_cancel_frees_the_slot_at_once(loaded):
    eng = make_engine(loaded, delay=0.02, max_batch_size=1, queue_size=1)
    try:
        long = Run(
            eng, [1, 2, 3], max_tokens=500, logit_bias={150: 100.0}, logprobs=0
        )  # no eos; a Delta per token
        long.events.get(timeout=30)  # running
        waiting = Run(eng, [4, 5], max_tokens=3)
        with pytest.raises(EngineError) as info:
            Run(eng, [6, 7], max_tokens=3)
        err = http_error(info.value)
        assert err.status == 429 and dict(err.headers).get("Retry-After")
        started = time.monotonic()
        long.job.cancel()
        assert waiting.result(timeout=30)["finished"][0].reason in ("stop", "length")
        assert time.monotonic() - started < 8  # not after 500 x 20 ms
        assert eng.running_sequences == 0 and eng.waiting_requests == 0
    finally:
        eng.shutdown(5)


def test_queue_timeout(loaded):
    eng = make_engine(loaded, delay=0.02, max_batch_size=1, queue_timeout=0.2)
    try:
        long = Run(
            eng, [1, 2, 3], max_tokens=400, logit_bias={150: 100.0}, logprobs=0
        )  # 8 s at least
        long.events.get(timeout=30)
        late = Run(eng, [4, 5], max_tokens=3)
        res = late.result(timeout=30)
        assert res["failed"] is not None and res["failed"].code == "queue_timeout"
        long.job.cancel()
    finally:
        eng.shutdown(5)


def test_memory_budget_refuses_and_queues(loaded):
    eng = make_engine(loaded, delay=0.01, max_batch_size=8)
    per_token = eng.kv_bytes_per_token
    assert per_token > 0
    # Room for one 100-token sequence at a time.
    eng.settings = EngineSettings(max_batch_size=8, kv_budget_bytes=per_token * 150)
    try:
        with pytest.raises(EngineError) as info:
            Run(eng, [1, 2], max_tokens=400)
        err = http_error(info.value)
        assert err.status == 503 and err.code == "insufficient_memory"
        a = Run(
            eng, [1, 2], max_tokens=90, logit_bias={150: 100.0}, logprobs=0
        )  # no eos; a Delta per token
        a.events.get(timeout=30)  # a is decoding
        b = Run(eng, [3, 4], max_tokens=90, logit_bias={150: 100.0}, logprobs=0)
        time.sleep(0.2)
        assert eng.running_sequences == 1 and eng.waiting_requests == 1  # b waits for a's memory
        assert a.result()["finished"][0].completion_tokens == 90
        assert b.result()["finished"][0].completion_tokens == 90
    finally:
        eng.shutdown(5)


def test_concurrent_submitters(engine):
    results = {}

    def worker(i):
        results[i] = Run(engine, PROMPTS[i % len(PROMPTS)], max_tokens=8).result()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 12 and all(r["failed"] is None for r in results.values())


def tokens_of(res) -> list[int]:
    return [lp.token for lp in res["logprobs"][0]]


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=0.0),
        dict(temperature=1.0, seed=77, top_p=0.9),
        dict(temperature=0.0, frequency_penalty=1.5),
    ],
)
def test_lone_stream_handed_to_the_batch_keeps_its_tokens(loaded, params):
    """A lone request decodes outside the batch; when a second arrives it moves into the batch
    mid-stream. Its tokens must be exactly those of an undisturbed run (same sampler draws)."""
    eng = make_engine(loaded, delay=0.005, max_batch_size=4)
    try:
        alone = tokens_of(Run(eng, [5, 6, 7], max_tokens=40, logprobs=0, **params).result())
        first = Run(eng, [5, 6, 7], max_tokens=40, logprobs=0, **params)
        early = []
        while len(early) < 10:  # ten tokens in, running alone
            ev = first.events.get(timeout=30)
            assert isinstance(ev, Delta)
            early += [lp.token for lp in ev.logprobs]
        assert eng.running_sequences == 1
        second = Run(eng, [40, 41, 42], max_tokens=20, logprobs=0)
        res = first.result()
        assert early + [lp.token for lp in res["logprobs"].get(0, [])] == alone
        assert res["finished"][0].completion_tokens == len(alone) == 40
        assert second.result()["failed"] is None
    finally:
        eng.shutdown(5)


def test_solo_and_batch_paths_agree(loaded):
    solo = make_engine(loaded, solo=True)
    batch = make_engine(loaded, solo=False)
    try:
        for prompt in PROMPTS[:3]:
            a = Run(solo, prompt, max_tokens=12, logprobs=2).result()
            b = Run(batch, prompt, max_tokens=12, logprobs=2).result()
            assert tokens_of(a) == tokens_of(b)
            assert a["text"] == b["text"]
    finally:
        solo.shutdown(5)
        batch.shutdown(5)


class ShapeLog(SlowModel):
    """Records the (batch, length) of every forward pass that prefills (length > 1)."""

    def __init__(self, model, delay: float) -> None:
        super().__init__(model, delay)
        self.prefills: list[tuple[int, int]] = []

    def __call__(self, inputs, *args, **kwargs):
        if inputs.ndim == 2 and inputs.shape[1] > 1:
            self.prefills.append(tuple(inputs.shape))
        return super().__call__(inputs, *args, **kwargs)


@pytest.mark.parametrize("setting", [None, 2])
def test_a_burst_of_prompts_joins_in_one_prefill_group_by_default(loaded, setting):
    """Auto prefill batch: six short prompts arriving while a stream runs are prefilled in one
    step (each separate group would stall every running stream for a step); with a fixed
    --prefill-batch-size 2 they take at least three (mlx-lm admits new prompts before the last
    group leaves the prompt batch, so in practice it is one at a time)."""
    model, tokenizer = loaded
    logged = ShapeLog(model, 0.02)
    eng = Engine(logged, tokenizer, EngineSettings(max_batch_size=8, prefill_batch_size=setting))
    eng.start()
    try:
        assert eng.ready.wait(60)
        first = Run(eng, [5, 6, 7], max_tokens=40)
        while not first.events.qsize():  # it runs (solo) before the burst arrives
            time.sleep(0.005)
        logged.prefills.clear()
        burst = [Run(eng, [10 + i, 11, 12, 13, 14, 15, 16, 17], max_tokens=4) for i in range(6)]
        for run in [first] + burst:
            assert run.result()["failed"] is None
        sizes = [b for b, _ in logged.prefills]
        if setting is None:
            assert sizes == [6], logged.prefills
        else:
            assert len(sizes) >= 3 and max(sizes) <= 2 and sum(sizes) == 6, logged.prefills
    finally:
        eng.shutdown(5)
