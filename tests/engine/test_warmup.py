"""--warm-up idle|start: which warm-up paths run before ready, and the rest in idle time."""

from __future__ import annotations

import threading

import pytest

from mlxd.engine import loop, warmup
from mlxd.engine.loop import Engine, EngineSettings

from helpers import run_job as run
from helpers import text_of
from routerkit import wait_for


@pytest.fixture
def paths(monkeypatch):
    """Each warm-up path after the first, as it runs: (name, whether the engine was ready)."""
    seen: list[tuple[str, bool]] = []
    ready: list[threading.Event] = []
    group, cached = warmup.WarmUpRun._group, warmup.WarmUpRun._cached_prefix

    def on_group(self, gen, prompts):
        seen.append((f"group of {len(prompts)}", ready[0].is_set()))
        return group(self, gen, prompts)

    def on_cached(self, gen):
        seen.append(("cached prefix", ready[0].is_set()))
        return cached(self, gen)

    monkeypatch.setattr(warmup.WarmUpRun, "_group", on_group)
    monkeypatch.setattr(warmup.WarmUpRun, "_cached_prefix", on_cached)
    return seen, ready


def _engine(tiny_model_dir, when: str, ready: list) -> Engine:
    from mlx_lm import load

    model, tokenizer = load(str(tiny_model_dir))
    engine = Engine(model, tokenizer, EngineSettings(warm_up=when))
    ready.append(engine.ready)
    engine.start()
    assert engine.ready.wait(60)
    return engine


def test_start_runs_every_path_before_ready(tiny_model_dir, paths):
    seen, ready = paths
    engine = _engine(tiny_model_dir, "start", ready)
    try:
        # On the CPU: the padded pair and the cached prefix (the long chunk is GPU-only).
        assert seen == [("group of 2", False), ("cached prefix", False)]
        assert engine.vocab_size > 0 and engine.kv_bytes_per_token > 0
    finally:
        engine.shutdown(5)


def test_idle_is_ready_after_one_sequence_and_warms_the_rest_between_requests(
    tiny_model_dir, paths, monkeypatch
):
    seen, ready = paths
    monkeypatch.setattr(loop, "IDLE_BEFORE_S", 3600.0)  # no idle time yet
    engine = _engine(tiny_model_dir, "idle", ready)
    try:
        assert seen == []  # only the one-sequence path ran before ready
        assert engine.vocab_size > 0 and engine.kv_bytes_per_token > 0  # its facts are known
        # A request before the rest warmed up is served as usual.
        greedy = text_of(run(engine, [1, 2, 3], max_tokens=6, temperature=0.0))
        assert greedy and seen == []
        monkeypatch.setattr(loop, "IDLE_BEFORE_S", 0.0)  # now idle
        wait_for(lambda: len(seen) == 2, what="the idle warm-up paths")
        assert seen == [("group of 2", True), ("cached prefix", True)]
        # The batch is idle and intact after the warm-up: the same request, the same text.
        assert text_of(run(engine, [1, 2, 3], max_tokens=6, temperature=0.0)) == greedy
    finally:
        engine.shutdown(5)
