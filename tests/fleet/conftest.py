"""Fixtures for the front end's tests (helpers in tests/routerkit.py)."""

from __future__ import annotations

import pytest

from routerkit import FAKE_WORKER, FrontThread


@pytest.fixture
def front_factory():
    """Start front ends (stand-in workers unless told otherwise); all close after the test."""
    started: list[FrontThread] = []

    def make(config, worker=FAKE_WORKER) -> FrontThread:
        front = FrontThread(config, worker).start()
        started.append(front)
        return front

    yield make
    for front in started:
        front.close()
