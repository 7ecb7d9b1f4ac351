"""The one generation thread: it owns the model, takes jobs from a ``queue.Queue`` and sends typed
events back through each job's ``emit`` callback (the server wraps ``loop.call_soon_threadsafe``).

Layering follows mlx-lm: ``generate_step`` yields token ids, ``TextStream`` turns them into safe
text deltas, and the API layer turns our events into OpenAI chunks. This first cut runs one job at
a time, in arrival order; batching replaces ``_run_job`` without changing the events.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Union

import mlx.core as mx
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler

from .errors import SERVER_ERROR, HttpError, bad_request
from .textstream import StopScanner, TextStream

log = logging.getLogger("mlxd.engine")

WARMUP_TEXT = "Hello! Say something short."   # runs the prefill and decode kernels once
WARMUP_DECODE_TOKENS = 4


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


# Events, generation thread -> event loop.
@dataclass(frozen=True)
class Delta:
    """New text for the client (may be empty while bytes or a stop string are held back)."""
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str              # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    error: HttpError


Event = Union[Delta, Finished, Failed]


class Job:
    """One generation request. The owner may ``cancel()`` it from any thread."""

    def __init__(self, prompt: list[int], params: SamplingParams,
                 emit: Callable[[Event], None]) -> None:
        self.prompt = prompt
        self.params = params
        self.emit = emit
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


_SHUTDOWN = object()


class Engine:
    def __init__(self, model, tokenizer, *, prefill_step_size: int = 512) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prefill_step_size = prefill_step_size
        self.ready = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlxd-generate", daemon=True)
        # Counters read by /health and logs; written only by the generation thread.
        self.running = 0
        self.warmup_seconds: float | None = None
        self.vocab_size: int | None = None    # learnt at warm-up

    # ----- called from the event loop -----

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def shutdown(self, timeout: float | None = None) -> None:
        self._queue.put(_SHUTDOWN)
        self._thread.join(timeout)

    # ----- the generation thread -----

    def _run(self) -> None:
        try:
            self._warm_up()
        except Exception:  # a model that cannot generate must not look ready
            log.exception("warm-up failed")
            return
        self.ready.set()
        while (job := self._queue.get()) is not _SHUTDOWN:
            if job.cancelled:
                continue
            self.running = 1
            try:
                self._run_job(job)
            except Exception as exc:  # keep serving: one bad job must not take the thread down
                log.exception("generation failed")
                job.emit(Failed(HttpError(500, SERVER_ERROR, f"generation failed: {exc}")))
            finally:
                self.running = 0
        log.debug("generation thread stopped")

    def _warm_up(self) -> None:
        start = time.perf_counter()
        tokens = self.tokenizer.encode(WARMUP_TEXT, add_special_tokens=False) or [0]
        for _token, logprobs in generate_step(mx.array(tokens), self.model,
                                              max_tokens=WARMUP_DECODE_TOKENS):
            # The output width is the model's real vocabulary (often padded past the tokenizer's).
            self.vocab_size = logprobs.shape[-1]
        mx.clear_cache()
        self.warmup_seconds = time.perf_counter() - start
        log.info("warm-up done in %.2fs", self.warmup_seconds)

    def _run_job(self, job: Job) -> None:
        p = job.params
        bad = next((t for t in job.prompt if not 0 <= t < self.vocab_size), None)
        if bad is not None:   # an out-of-range id would read outside the embedding table
            job.emit(Failed(bad_request(f"token id {bad} is outside the vocabulary "
                                        f"(0-{self.vocab_size - 1})", "prompt")))
            return
        if p.seed is not None:
            mx.random.seed(p.seed)
        sampler = make_sampler(temp=p.temperature, top_p=p.top_p if p.top_p < 1.0 else 0.0)
        text = TextStream(self.tokenizer.detokenizer, StopScanner(p.stop))
        eos = self.tokenizer.eos_token_ids
        steps = generate_step(mx.array(job.prompt), self.model, max_tokens=p.max_tokens,
                              sampler=sampler, prefill_step_size=self.prefill_step_size)
        produced, reason = 0, "length"
        for token, _logprobs in steps:
            if job.cancelled:
                return
            produced += 1
            if token in eos:
                reason = "stop"
                break
            piece, hit = text.push(token)
            if piece:
                job.emit(Delta(piece))
            if hit:
                self._finish(job, "stop", produced)
                return
        piece, hit = text.finish()
        if piece:
            job.emit(Delta(piece))
        self._finish(job, "stop" if hit else reason, produced)

    def _finish(self, job: Job, reason: str, produced: int) -> None:
        job.emit(Finished(reason, len(job.prompt), produced))
