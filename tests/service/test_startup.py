"""startup.py: a log line as each phase begins, the time of each in the ready line, and the
status line's text (a spinner, or a bar where the phase knows its steps)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging

import pytest

from mlxd.service import logs, startup
from mlxd.service.startup import Startup


def test_phases_are_logged_as_they_begin_and_timed(caplog):
    caplog.set_level(logging.INFO, logger="mlxd")
    s = Startup()
    s.phase("model read", detail="m.gguf")
    s.phase("dense copy")
    s.phase("calibration", 0, 5)
    s.phase("calibration", 3, 5)  # progress within a phase: no new line
    s.phase("warm-up")
    summary = s.finish()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "reading the model m.gguf"
    assert lines[1].startswith("building a dense copy of the quantized weights")
    assert lines[2].startswith("timing quantized against dense weights")
    assert lines[3] == "warming up" and len(lines) == 4
    assert list(s.took) == ["model read", "dense copy", "calibration", "warm-up"]
    assert summary.endswith("s (model read 0.0s, dense copy 0.0s, calibration 0.0s, warm-up 0.0s)")


def test_status_text_spinner_or_bar():
    s = Startup()
    assert s.status_text("|").startswith("| starting ")
    s.phase("model read", detail="m")
    assert s.status_text("/").startswith("/ reading the model 0.0s (start-up ")
    s.phase("calibration", 2, 4)
    assert s.status_text("-").startswith(f"{logs.bar(2, 4)} timing weight formats ")


def test_status_line_is_drawn_on_a_terminal_only(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = list(root.handlers), root.level
    monkeypatch.setattr(startup, "PROGRESS_INTERVAL_S", 0.01)
    out = Terminal()
    try:
        logs.setup("info", stream=out)

        async def main():
            s = Startup()
            s.phase("warm-up")
            task = s.show()
            assert task is not None
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(main())
        logs.setup("info", stream=io.StringIO())
        assert Startup().show() is None
    finally:
        for h in [h for h in root.handlers if h.name == logs.HANDLER_NAME]:
            root.removeHandler(h)
        root.handlers[:], root.level = saved[0], saved[1]
    assert "\r\x1b[K| warming up 0.0s" in out.getvalue()
    assert out.getvalue().endswith("\r\x1b[K")


# ----- a kept calibration is read before any dense copy is built -----


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory):
    from tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("q4") / "q4", quantize_bits=4)


def test_a_kept_quantized_calibration_builds_no_dense_copy(quantized_dir, tmp_path, monkeypatch):
    from mlx_lm import load

    from mlxd.models import weights
    from mlxd.service import wiring
    from mlxd.service.config import Config

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model, _tok = load(str(quantized_dir))
    config = Config(model=str(quantized_dir), max_batch_size=8)
    kept = weights.RoutingStore.default().path(str(quantized_dir), 8)
    table = (("prefill", 1, 1.0, 2.0), ("decode", 1, 1.0, 2.0))

    weights.RoutingStore.save(kept, weights.Routing(None, False, table))
    built = []
    real_prepare = weights.prepare
    monkeypatch.setattr(
        weights, "prepare", lambda *a, **kw: built.append(1) or real_prepare(*a, **kw)
    )
    assert wiring.weights_for(model, config, Startup()) == (model, None)
    assert built == []  # quantized everywhere: no copy to drop

    weights.RoutingStore.save(kept, weights.Routing(None, True, table))  # dense prefill wins
    served, file = wiring.weights_for(model, config, Startup())
    assert isinstance(served, weights.DualModel) and file == kept and built == [1]

    served, file = wiring.weights_for(
        model, dataclasses.replace(config, weights="quantized"), Startup()
    )
    assert served is model and file is None and built == [1]


def test_the_summary_counts_from_the_process_start():
    import time

    s = Startup(began=time.monotonic() - 2.0)
    s.phase("warm-up")
    summary = s.finish()
    assert summary.startswith("2.") and "(start 2.0s, warm-up 0.0s)" in summary
