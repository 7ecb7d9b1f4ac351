"""Typed messages from the generation thread to the event loop (one job's stream of them).

A job with ``n`` choices sends ``Delta``s tagged with their choice index and one ``Finished`` per
choice; a ``Failed`` ends the whole job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .errors import HttpError


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()   # (token id, logprob), most likely first


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
    reason: str              # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True)
class Failed:
    error: HttpError


Event = Union[Delta, Finished, Failed]
