"""The generation thread on the tiny model: events, stop strings, cancellation, seeds."""

from __future__ import annotations

import queue

import pytest

from mlxd.api.errors import http_error
from mlxd.engine.loop import Engine, Failed, Finished, Job, SamplingParams
from mlxd.engine.textstream import StopScanner

from helpers import run_job as run
from helpers import text_of


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from mlx_lm import load

    model, tokenizer = load(str(tiny_model_dir))
    eng = Engine(model, tokenizer)
    eng.start()
    assert eng.ready.wait(30)
    yield eng
    eng.shutdown(5)


def test_length_finish_counts_tokens(engine):
    events = run(engine, [5, 6, 7], max_tokens=7, temperature=0.0)
    end = events[-1]
    assert isinstance(end, Finished)
    assert end.prompt_tokens == 3
    assert end.completion_tokens <= 7
    assert end.reason in ("length", "stop")
    if end.reason == "length":
        assert end.completion_tokens == 7


def test_greedy_is_deterministic(engine):
    a = text_of(run(engine, [10, 11, 12], max_tokens=12, temperature=0.0))
    b = text_of(run(engine, [10, 11, 12], max_tokens=12, temperature=0.0))
    assert a == b


def test_seed_makes_sampling_repeatable(engine):
    a = text_of(run(engine, [3, 4], max_tokens=12, temperature=1.0, seed=42))
    b = text_of(run(engine, [3, 4], max_tokens=12, temperature=1.0, seed=42))
    assert a == b


def test_stop_string_is_cut_out(engine):
    full = text_of(run(engine, [20, 21], max_tokens=20, temperature=0.0))
    if len(full) < 4:
        pytest.skip("the random model ended too early to pick a stop string")
    stop = full[2:4]
    events = run(engine, [20, 21], max_tokens=20, temperature=0.0, stop=(stop,))
    assert events[-1].reason == "stop"
    assert text_of(events) == full[: full.index(stop)]


def test_cancelled_job_stops_and_next_job_runs(engine):
    events: queue.Queue = queue.Queue()
    job = Job([1, 2, 3], SamplingParams(max_tokens=500, temperature=1.0), events.put)
    job.cancel()
    engine.submit(job)
    after = run(engine, [1, 2], max_tokens=3, temperature=0.0)
    assert isinstance(after[-1], Finished)
    assert events.empty()  # cancelled while it waited: it never started, so not one event


def test_out_of_range_token_fails_cleanly_and_thread_survives(engine):
    bad = run(engine, [1, 10**9], max_tokens=3)  # would read outside the embedding table
    assert isinstance(bad[-1], Failed)
    err = http_error(bad[-1].error)
    assert err.status == 400 and err.param == "prompt"
    good = run(engine, [1, 2], max_tokens=2, temperature=0.0)
    assert isinstance(good[-1], Finished)


@pytest.mark.parametrize(
    "stops,pieces,expected,hit",
    [
        (("END",), ["ab", "cE", "N", "Dxyz"], "abc", "END"),
        (("END",), ["ab", "cE", "N"], "abc", None),  # held back until proven not a stop
        (("\n\n", "###"), ["x\n", "#", "##"], "x\n", "###"),
        (("aa",), ["a", "b", "a", "a"], "ab", "aa"),
        (("bcd", "abc"), ["xab", "cd"], "x", "abc"),  # earliest occurrence wins, and is named
        (("🙂",), ["smile ", "🙂"], "smile ", "🙂"),
    ],
)
def test_stop_scanner(stops, pieces, expected, hit):
    scanner = StopScanner(stops)
    out, got = "", None
    for piece in pieces:
        text, got = scanner.feed(piece)
        out += text
        if got:
            break
    if not got:
        assert out + scanner.flush() == "".join(pieces)
    assert got == hit
    if hit:
        assert out == expected
    else:
        assert "".join(pieces).startswith(out)


def test_multibyte_characters_come_out_whole(engine):
    from mlxd.engine.textstream import TextStream

    tokenizer = engine.tokenizer
    original = "Café 🙂 日本語 and ∑ √"
    ids = tokenizer.encode(original, add_special_tokens=False)
    assert len(ids) > len(original.split())  # some characters span several tokens
    stream = TextStream(tokenizer.detokenizer, StopScanner(()))
    pieces = [stream.push(t)[0] for t in ids]
    pieces.append(stream.finish()[0])
    assert "".join(pieces) == original
    assert not any("\ufffd" in p for p in pieces)
