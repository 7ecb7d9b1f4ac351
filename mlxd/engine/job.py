"""What the engine runs: a ``Job`` (one request, from the event loop) and a ``Seq`` (one choice of
a job while it runs on the generation thread)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from mlxd.engine.sampling import SamplingParams
from mlxd.engine.textstream import TextStream
from mlxd.engine.vision import VisionInput


class Job:
    """One request: ``n`` choices of one prompt. The owner may ``cancel()`` it from any thread."""

    def __init__(
        self, prompt: list[int], params: SamplingParams, emit, vision: VisionInput | None = None
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.emit = emit
        self.vision = vision  # images in the prompt (engine/vision.py)
        self.submitted = time.monotonic()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class Seq:
    """One choice of one job while it runs (engine thread only)."""

    job: Job
    index: int
    text: TextStream
    reserved: int  # KV bytes counted against the budget
    cached_tokens: int = 0
    produced: int = 0


@dataclass
class EngineStats:
    """Counters of the generation thread (others read them; ints are safe to read)."""

    prompt_tokens: int = 0  # prompt tokens the model computed (prefill)
    reused_tokens: int = 0  # prompt tokens taken from a KV cache instead
    shared_starts: int = 0  # choices that started from a running sequence's cache
    steps: int = 0  # batch steps
    prefill_steps: int = 0  # of them, steps that also prefilled
