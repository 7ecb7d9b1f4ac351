"""Typed messages from the generation thread to the event loop (one job's stream of them).

A job with ``n`` choices sends ``Delta``s tagged with their choice index and one ``Finished`` per
choice; a ``Failed`` ends the whole job.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True)
class Delta:
    """New text for choice ``index`` (may be empty while bytes or a stop string are held back),
    with the log-probabilities of the tokens it covers when the request asked for them."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    index: int
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    stop: str | None = None  # the stop string that ended it (reason "stop"), if one did


@dataclass(frozen=True)
class Failed:
    """Ends a job: an ``EngineError`` from the engine, or an error the API itself raised
    (a request timeout); ``mlxd/api/errors.py`` maps either to what the client gets."""

    error: Exception


Event = Delta | Finished | Failed


class Courier:
    """Carries events from the generation thread to one event loop, many per wake-up.

    A decode step emits one event per running stream; waking the loop for each (a self-pipe write
    per ``call_soon_threadsafe``) costs the generation thread a syscall per token and the loop a
    wake-up per token. Here the first event of a burst schedules one delivery and the rest ride
    along; each job's events keep their order.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._parcels: list[tuple[Callable[[Event], None], Event]] = []

    def send(self, deliver: Callable[[Event], None], event: Event) -> None:
        """From any thread: ``deliver(event)`` will run on the loop."""
        with self._lock:
            self._parcels.append((deliver, event))
            if len(self._parcels) > 1:
                return  # a delivery is already scheduled and will take this one too
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _deliver(self) -> None:
        with self._lock:
            parcels, self._parcels = self._parcels, []
        for deliver, event in parcels:
            deliver(event)
