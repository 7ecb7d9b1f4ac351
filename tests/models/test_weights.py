"""The weight-format policy: a dense twin next to quantized weights, routed per step."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import mlx.core as mx
import pytest

from mlxd.models.weights import (
    CPU_PLAN,
    DualModel,
    Plan,
    Routing,
    calibrate,
    dense_twin,
    is_quantized,
    prepare,
)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from mlx_lm import load

    from tinymodel import build_tiny_model

    model, _tok = load(str(build_tiny_model(tmp_path_factory.mktemp("q4") / "q4", quantize_bits=4)))
    return model


def test_dense_twin_matches_quantized_logits(quantized):
    assert is_quantized(quantized)
    twin = dense_twin(quantized)
    assert not is_quantized(twin)
    tokens = mx.array([[5, 6, 7, 8]])
    a, b = quantized(tokens), twin(tokens)
    assert a.dtype == b.dtype
    assert mx.allclose(a, b, atol=1e-3, rtol=1e-3).item()


def test_routing_by_batch_and_length(quantized):
    calls = []

    class Spy:
        def __init__(self, name):
            self.name = name

        def __call__(self, inputs, cache=None):
            calls.append(self.name)

    dual = DualModel(Spy("q"), Spy("d"), Routing(decode_dense_from=4, prefill_dense=True))
    dual(mx.zeros((1, 1))), dual(mx.zeros((3, 1))), dual(mx.zeros((4, 1))), dual(mx.zeros((9, 1)))
    dual(mx.zeros((1, 30)))
    assert calls == ["q", "q", "d", "d", "d"]
    dual.routing = Routing()
    dual(mx.zeros((64, 1))), dual(mx.zeros((1, 30)))
    assert calls[-2:] == ["q", "q"]


def test_prepare_policies(quantized):
    assert prepare(quantized, "quantized") is quantized
    assert not is_quantized(prepare(quantized, "dense"))
    both = prepare(quantized, "both")
    assert isinstance(both, DualModel) and both.quantized is quantized
    auto = prepare(quantized, "auto")
    if mx.default_device() == mx.gpu:  # fits: calibration will decide
        assert isinstance(auto, DualModel) and auto.quantized is quantized
    else:  # the CPU serves quantized weights (no dense copy, nothing to time)
        assert auto is quantized


def test_calibration_routes_and_generation_agrees(quantized):
    dual = prepare(quantized, "both")
    routing = calibrate(
        dual, max_batch=4, plan=Plan(batches=(1, 2, 4), context=4, prefill=8, reps=1)
    )
    assert [row[:2] for row in routing.table] == [
        ("prefill", 1),
        ("decode", 1),
        ("decode", 2),
        ("decode", 4),
    ]
    assert all(q > 0 and d > 0 for _k, _b, q, d in routing.table)
    # Whatever the routing, a forced mixed routing gives the same greedy tokens as quantized.
    from mlx_lm.generate import generate_step

    dual.routing = Routing(decode_dense_from=1, prefill_dense=True)
    prompt = mx.array([5, 6, 7, 8, 9])
    q_tokens = [t for t, _ in generate_step(prompt, quantized, max_tokens=8)]
    d_tokens = [t for t, _ in generate_step(prompt, dual, max_tokens=8)]
    assert q_tokens == d_tokens
    assert CPU_PLAN.reps >= 1


def test_engine_serves_through_a_dual_model(quantized, tiny_model_dir):
    import queue

    from mlx_lm import load

    from mlxd.engine.events import Finished
    from mlxd.engine.loop import Engine, EngineSettings, Job
    from mlxd.engine.sampling import SamplingParams

    _model, tokenizer = load(str(tiny_model_dir))
    engine = Engine(
        prepare(quantized, "both"), tokenizer, EngineSettings(weights="both", calibrate="start")
    )
    engine.start()
    try:
        assert engine.ready.wait(60)
        assert isinstance(engine.model, DualModel) and engine.model.routing.table
        events: queue.Queue = queue.Queue()
        engine.submit(Job([5, 6, 7], SamplingParams(max_tokens=4, temperature=0.0), events.put))
        while not isinstance(ev := events.get(timeout=30), Finished):
            pass
        assert ev.completion_tokens <= 4
    finally:
        engine.shutdown(5)


def test_a_calibration_is_kept_and_reused(quantized, tiny_model_dir, tmp_path, caplog):
    """The first start times both copies and keeps the routing on disk; the next start with the
    same model, device and batch limit reuses it (logged, with the file to delete)."""
    from mlx_lm import load

    from mlxd.engine.loop import Engine, EngineSettings
    from mlxd.models.weights import RoutingStore

    caplog.set_level(logging.INFO, logger="mlxd.models.weights")
    _model, tokenizer = load(str(tiny_model_dir))
    store = RoutingStore(tmp_path)
    path = store.path(str(tiny_model_dir), 8)
    assert path == store.path(str(tiny_model_dir), 8) != store.path(str(tiny_model_dir), 16)
    routings = []
    for _ in range(2):
        engine = Engine(
            prepare(quantized, "both"),
            tokenizer,
            EngineSettings(weights="both", calibrate="start", calibration_file=str(path)),
        )
        engine.start()
        try:
            assert engine.ready.wait(60)
            routings.append(engine.model.routing)
        finally:
            engine.shutdown(5)
        assert path.exists()
    assert routings[0] == routings[1] and routings[0].table
    assert "calibration reused from" in caplog.text
    path.write_text("{not json")
    assert RoutingStore.load(path) is None  # a damaged file is measured again


def test_the_calibration_key_is_the_content_not_the_place(tiny_model_dir, tmp_path):
    """A copied model, a touched file, another folder name: the same key; other bytes, another
    batch limit: another key."""
    import os
    import shutil

    from mlxd.models.weights import RoutingStore

    store = RoutingStore(tmp_path / "store")
    key = store.path(str(tiny_model_dir), 8)
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "elsewhere" / "renamed"))
    os.utime(copy / "model.safetensors", (0, 0))
    assert store.path(str(copy), 8) == key != store.path(str(copy), 4)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert store.path(str(copy), 8) != key
    gguf = tmp_path / "a.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))
    shutil.copy(gguf, tmp_path / "model")
    assert store.path(str(gguf), 8) == store.path(str(tmp_path / "model"), 8)


def test_idle_calibration_serves_at_once_then_measures(
    quantized, tiny_model_dir, tmp_path, monkeypatch
):
    """--calibrate idle: ready with the device's default routing (nothing timed before ready),
    then the pieces are measured while the engine has nothing to do, and the result is kept."""
    from mlx_lm import load

    from mlxd.engine import calibration
    from mlxd.engine.loop import Engine, EngineSettings
    from mlxd.models.weights import RoutingStore, prior

    monkeypatch.setattr(calibration, "IDLE_BEFORE_S", 0.0)
    _model, tokenizer = load(str(tiny_model_dir))
    path = RoutingStore(tmp_path).path(str(tiny_model_dir), 8)
    pieces = []
    original = calibration.Calibration.step
    monkeypatch.setattr(
        calibration.Calibration, "step", lambda self: pieces.append(1) or original(self)
    )
    engine = Engine(
        prepare(quantized, "both"),
        tokenizer,
        EngineSettings(weights="both", calibrate="idle", calibration_file=str(path)),
    )
    engine.start()
    try:
        assert engine.ready.wait(60)
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.exists() and len(pieces) >= 2  # measured in several idle pieces
        assert engine.model.routing.table and RoutingStore.load(path) == engine.model.routing
    finally:
        engine.shutdown(5)
    assert prior("cuda").prefill_dense and prior("cpu") == calibration.Routing()
