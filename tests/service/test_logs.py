"""logs.py: text and JSON lines, extra fields, a file that follows logrotate, the status line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from mlxd.service import logs


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in [h for h in root.handlers if h.name == logs.HANDLER_NAME]:
        root.removeHandler(h)
        h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_lines_carry_extra_fields(restore_root):
    out = io.StringIO()
    logs.setup("info", stream=out)
    logging.getLogger("mlxd.access").info("GET / %d", 200, extra={"request_id": "req-1"})
    logging.getLogger("mlxd").debug("hidden at info")
    line = out.getvalue()
    assert " INFO mlxd.access: GET / 200 request_id=req-1\n" in line
    assert "hidden" not in line


def test_json_lines(restore_root):
    out = io.StringIO()
    logs.setup("debug", fmt="json", stream=out)
    logging.getLogger("mlxd.access").info("done", extra={"request_id": "req-2", "status": 200})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("mlxd").exception("it failed: %s", "why")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "info" and first["logger"] == "mlxd.access"
    assert first["message"] == "done" and first["request_id"] == "req-2" and first["status"] == 200
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["message"] == "it failed: why" and "ValueError: boom" in second["exc_info"]


def test_setup_replaces_its_own_handler_only(restore_root):
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    first, second = io.StringIO(), io.StringIO()
    logs.setup(stream=first)
    logs.setup(stream=second)
    logging.getLogger("mlxd").warning("once")
    assert first.getvalue() == "" and "once" in second.getvalue()
    assert other in logging.getLogger().handlers
    logging.getLogger().removeHandler(other)


def test_log_file_survives_logrotate(restore_root, tmp_path):
    path = tmp_path / "sub" / "mlxd.log"
    logs.setup("info", str(path))
    logging.getLogger("mlxd").info("before")
    path.rename(tmp_path / "mlxd.log.1")  # what logrotate does (without copytruncate)
    logging.getLogger("mlxd").info("after")
    logs.flush()
    assert "before" in (tmp_path / "mlxd.log.1").read_text()
    assert "after" in path.read_text() and "before" not in path.read_text()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_stays_below_log_lines(restore_root):
    out = Terminal()
    logs.setup("info", stream=out)
    status = logs.status_line()
    assert status is not None
    status.show("| reading the model 0.1s")
    logging.getLogger("mlxd").info("loaded m")
    status.show("| warming up 0.2s")
    logs.release(status)
    logging.getLogger("mlxd").info("ready")
    text = out.getvalue()
    # erase the line, print the record, draw the line again below it
    assert "\r\x1b[K| reading the model 0.1s\r\x1b[K" in text
    assert "loaded m\n| reading the model 0.1s\r\x1b[K| warming up 0.2s\r\x1b[K" in text
    assert text.endswith("ready\n")  # released: records are plain lines again


def test_no_status_line_off_a_terminal(restore_root, tmp_path):
    logs.setup("info", stream=io.StringIO())
    assert logs.status_line() is None
    logs.setup("info", str(tmp_path / "mlxd.log"))
    assert logs.status_line() is None


def test_bar():
    assert logs.bar(0, 4, width=8) == "[--------] 0/4"
    assert logs.bar(3, 4, width=8) == "[######--] 3/4"
    assert logs.bar(5, 4, width=8) == "[########] 5/4"
