"""The one generation thread: it owns the model, takes jobs from a ``queue.Queue`` and sends typed
events back through each job's ``emit`` callback (the server wraps ``loop.call_soon_threadsafe``).

Scheduling is continuous batching on mlx-lm's ``BatchGenerator``: between two decode steps the
thread admits waiting jobs (within ``max_batch_size`` and the KV memory budget), drops cancelled
ones, and prefills new prompts in chunks that fit the step's token budget (schedule.py), so
running streams keep flowing. Layering follows mlx-lm: token ids -> ``TextStream`` (safe text
deltas) -> our events (emit.py) -> the API.

This module is the thread's life: start-up (weights, warm-up), the loop, and what happens when an
iteration fails or the thread dies. Which submitted job starts when is admission.py's; where a
job's choices start (the prompt cache, a running sequence's shared prefix, the solo path or the
batch) is placement.py's; stepping, emitting and ending what runs is running.py's. ``Job`` is in
job.py and ``EngineSettings`` in settings.py (both importable from here as before).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import LRUPromptCache

from mlxd.engine import attention, kvattention, kvcache, rowfilter, warmup
from mlxd.engine.admission import Admission
from mlxd.engine.calibration import IDLE_BEFORE_S, Weights
from mlxd.engine.errors import (
    EngineDead,
    GenerationFailed,
    ShuttingDown,
    out_of_vocabulary,
    vocabulary_error,
)
from mlxd.engine.events import Delta, Failed, Finished
from mlxd.engine.group import GroupAdmission, Lockstep
from mlxd.engine.job import EngineStats, Job
from mlxd.engine.kvcache import CacheMaker
from mlxd.engine.placement import Placement
from mlxd.engine.running import Running
from mlxd.engine.sampling import SamplingParams
from mlxd.engine.schedule import CPU_START_TOKENS, START_TOKENS, Pacer, StepBudget
from mlxd.engine.settings import EngineSettings
from mlxd.models.device import device_kind

# Re-exported: callers and tests import these from here.
__all__ = ["Delta", "Engine", "EngineSettings", "Failed", "Finished", "Job", "SamplingParams"]

log = logging.getLogger(__name__)


# Probe points: where a test may inject a failure (``Engine(probe=...)``), one per kind of work
# the loop does between two decode steps.
PROBE_POINTS = ("iteration", "admit", "handoff", "followers", "step", "emit", "finish", "recover")


def _no_probe(point: str) -> None:
    pass


class Engine:
    """``probe(point)`` runs at each of PROBE_POINTS (a test seam: raise there to inject a
    failure); ``on_failure(reason)`` runs on the generation thread if it dies after ready;
    ``on_phase(name, done=0, total=0)`` hears of the start-up phases this thread runs
    (``calibration``, ``warm-up``), from this thread."""

    def __init__(
        self,
        model,
        tokenizer,
        settings: EngineSettings | None = None,
        *,
        probe: Callable[[str], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        on_phase: Callable[..., None] | None = None,
        vlm=None,
        lockstep: Lockstep | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.vlm = vlm  # a VLM's mlx-vlm model: embeds the images of vision jobs at insert
        self.settings = settings or EngineSettings()
        self.ready = threading.Event()
        self.failure: str | None = None  # why the generation thread ended, if it failed
        self._probe = probe or _no_probe
        self._on_failure = on_failure
        self._on_phase = on_phase or (lambda name, done=0, total=0: None)
        self._thread = threading.Thread(target=self._run, name="mlxd-generate", daemon=True)
        # One rank of a group (group.py): the same loop on every rank, fed by rank 0's decisions.
        self._lockstep = lockstep
        self._admission = (
            GroupAdmission(lambda: self.settings, self.kv_bytes, lockstep)
            if lockstep is not None
            else Admission(lambda: self.settings, self.kv_bytes)
        )
        # Generation-thread state.
        self.stats = EngineStats()
        self._running = Running(
            tokenizer, self.stats, lambda: self.settings, self._probe, strict=lockstep is not None
        )
        self._placement = Placement(
            self._running, tokenizer, self.stats, lambda: self.settings, lambda: self.model, vlm
        )
        self._weights = Weights(model, self.settings)
        self._idle_since = time.monotonic()
        self._cuda = attention.wanted()
        self._attention_patched = 0  # model modules whose attention mlxd routes (CUDA)
        self._gpu = device_kind() != "cpu"
        self._warming: Iterator | None = None  # warm-up paths left for idle time
        # Learnt at warm-up.
        self.vocab_size = 0  # the model's output width
        self.kv_bytes_per_token: int = 0  # what a token costs once the cache is quantized
        self._kv_full_bytes_per_token = 0
        self._kv_tail = False  # quantized caches keep a full-precision tail (kvattention, CUDA)

    # ----- called from the event loop -----

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def waiting_requests(self) -> int:
        """Jobs queued, not started (one per request)."""
        return self._admission.pending

    @property
    def running_sequences(self) -> int:
        """Sequences decoding now: a request with ``n`` choices runs ``n``."""
        return len(self._running.seqs)

    def kv_bytes(self, tokens: int) -> int:
        """KV bytes ``tokens`` tokens of one sequence may hold (full precision up to
        --quantized-kv-start, then quantized), and where decode steps read the codes (CUDA) the
        sequence's full-precision tail of the latest ``kvcache.TAIL`` tokens besides."""
        full = min(tokens, self.settings.quantized_kv_start) if self.settings.kv_bits else tokens
        tail = kvcache.TAIL * self._kv_full_bytes_per_token if self._kv_tail else 0
        return (
            full * self._kv_full_bytes_per_token + (tokens - full) * self.kv_bytes_per_token + tail
        )

    def submit(self, job: Job) -> None:
        """Queue a job, or raise the 429/503 that says why it cannot be queued."""
        self._admission.submit(job)

    def shutdown(self, timeout: float | None = None) -> None:
        self._admission.close()
        self._thread.join(timeout)

    def lost(self, exc: BaseException) -> None:
        """From another thread (the group's watchdog): the generation thread is stuck in a
        collective that will not return; fail everything as if it had died."""
        self._die(exc)

    def weights_report(self) -> dict:
        return self._weights.report()

    # ----- the generation thread -----

    def _run(self) -> None:
        try:
            if self._lockstep is not None:
                self._lockstep.begin(self)
            if not self._prepare():
                return
            self.ready.set()
            self._serve_jobs()
        except BaseException as exc:  # noqa: BLE001 - a dead thread must be seen, never silent
            self._die(exc)
            return
        log.debug("generation thread stopped")

    def _prepare(self) -> bool:
        """Attention, weight routing, the batch generator and the warm-up; False (with
        ``failure`` set) when the model cannot serve."""
        if self._cuda:  # both copies share the modules' attention function
            self._attention_patched = attention.install_for(
                getattr(self.model, "quantized", self.model)
            )
        rowfilter.install()  # a finished sequence leaves the batch's cache in one gather
        try:
            self._weights.begin(self._on_phase)
            self._use_weights()
        except Exception as exc:
            log.exception("weight calibration failed")
            self.failure = f"weight calibration failed: {exc}"
            return False
        self._new_generator()
        try:
            self._on_phase("warm-up")
            self._warm_up()
        except Exception as exc:  # a model that cannot generate must not look ready
            log.exception("warm-up failed")
            self.failure = f"warm-up failed: {exc}"
            return False
        if self._lockstep is not None:
            self.settings, cache_bytes = self._lockstep.agree(
                self.settings, self.kv_bytes_per_token
            )
            self._running.prompt_cache = LRUPromptCache(max_bytes=cache_bytes)
        self._idle_since = time.monotonic()
        return True

    def _new_generator(self) -> None:
        """A fresh batch generator and pacer: nothing may run in the old ones."""
        s = self.settings
        self._running.pacer = Pacer(
            StepBudget(s.max_step_tokens, START_TOKENS if self._gpu else CPU_START_TOKENS),
            s.prefill_step_size,
            min(s.prefill_batch_size or s.max_batch_size, s.max_batch_size),
            pieces=self._cuda,  # a new piece length costs a CUDA forward ~30 ms (schedule.py)
        )
        self._running.gen = BatchGenerator(
            self.model,
            stop_tokens=[[t] for t in self.tokenizer.eos_token_ids],
            completion_batch_size=s.max_batch_size,
            prefill_batch_size=s.max_batch_size,  # the pacer sets both per step
            prefill_step_size=s.prefill_step_size,
        )

    def _use_weights(self) -> None:
        """Serve what ``_weights`` holds; memory a dropped twin gave back goes to KV caches."""
        self.model, freed = self._weights.model, self._weights.freed
        self._weights.freed = 0
        if freed and self.settings.kv_budget_bytes is not None:
            self.settings = replace(
                self.settings, kv_budget_bytes=self.settings.kv_budget_bytes + freed
            )

    def _serve_jobs(self) -> None:
        """Admit, drop, step, until shutdown; a failed iteration fails what was in flight and
        the loop goes on with a fresh batch (``_recover``)."""
        while self._admission.take(block=not self._running.seqs):
            try:
                self._probe("iteration")
                self._iteration()
            except Exception as exc:
                if self._lockstep is not None:
                    raise  # the ranks may no longer agree on the batch: the group cannot go on
                self._recover(exc)
        stopping = ShuttingDown("the server shut down before this request finished")
        self._running.fail_all(stopping)
        self._admission.fail_all(stopping)

    def _iteration(self) -> None:
        self._admission.expire()
        self._drop_cancelled()
        if self._running.solo is not None and self._admission.has_waiting:
            self._running.hand_solo_to_batch()
        self._start_waiting()
        if self._running.seqs:
            self._running.step(self._cuda)
            self._idle_since = time.monotonic()
        elif self._warming is not None and self._idle_for(IDLE_BEFORE_S):
            self._warm_next()
        elif self._weights.measuring and self._idle_for(IDLE_BEFORE_S):
            if self._weights.when_idle():  # the dense copy went
                self._use_weights()
                self._new_generator()  # idle: nothing runs in the old one

    def _idle_for(self, seconds: float) -> bool:
        return time.monotonic() - self._idle_since >= seconds and not self._admission.has_waiting

    def _warm_up(self) -> None:
        s = self.settings
        if s.kv_bits is not None and self.vlm is not None:  # image prefill makes its own caches
            raise ValueError("--kv-bits does not work with a vision-language model yet")
        # On CUDA there is no quantized attention kernel: caches dequantize for it (kvcache.py).
        new_cache = CacheMaker(self.model, s.kv_bits, s.quantized_kv_start, self._cuda)
        self._running.new_cache = new_cache
        warm = warmup.WarmUpRun(self.tokenizer, s.prefill_step_size, new_cache, self._gpu)
        # Decode steps may read a quantized cache's codes where mlxd routes attention (CUDA)
        # and the kernels check out (kvattention.decode, at the first step of each head shape).
        self._kv_tail = s.kv_bits is not None and self._attention_patched > 0
        kvattention.allow(self._kv_tail)
        done = warm.first(self._running.gen)
        self.vocab_size = done.vocab_size
        self._kv_full_bytes_per_token = self.kv_bytes_per_token = done.kv_bytes_per_token
        how = ""
        if s.kv_bits is not None:
            self.kv_bytes_per_token = done.kv_quantized_bytes_per_token
            how = f", {s.kv_bits}-bit: {self.kv_bytes_per_token} from token {s.quantized_kv_start}"
        facts = f"KV cache {done.kv_bytes_per_token} bytes/token{how}"
        if s.warm_up == "idle" and self._lockstep is None:
            self._warming = warm.rest()
            log.info(
                "warm-up done in %.2fs for one sequence (%s); the batch paths warm up in idle time",
                done.seconds,
                facts,
            )
            return
        seconds = done.seconds + warm.finish(self._running.gen)
        log.info("warm-up done in %.2fs (%s)", seconds, facts)

    def _warm_next(self) -> None:
        """One warm-up path left for idle time (the batch generator is idle)."""
        assert self._warming is not None
        path = next(self._warming, None)
        if path is None:
            self._warming = None
            log.info("warm-up of the batch paths done")
            return
        gen, s = self._running.gen, self.settings
        # As the pacer left them after the last step: reset to what a path needs.
        gen.prefill_batch_size, gen.prefill_step_size = s.max_batch_size, s.prefill_step_size
        try:
            path(gen)
        except Exception:
            self._warming = None  # the engine recovers with a fresh batch generator
            raise

    def _drop_cancelled(self) -> None:
        for orphan in self._running.drop_cancelled():  # their leader went before its first token
            self._start(orphan.job, orphan.need)

    def _start_waiting(self) -> None:
        while started := self._admission.next_to_start(*self._running.occupancy()):
            self._start(*started)

    def _start(self, job: Job, need: int) -> None:
        try:
            self._probe("admit")
            bad = out_of_vocabulary(job.prompt, self.vocab_size)
            if bad is not None:
                job.emit(Failed(vocabulary_error(bad, self.vocab_size, "prompt")))
                return
            self._placement.place(job, need, others_waiting=self._admission.has_waiting)
        except Exception as exc:
            log.exception("could not start a job")
            job.emit(Failed(GenerationFailed(f"could not start: {exc}")))

    def _recover(self, exc: Exception) -> None:
        """A failed iteration leaves the batch in an unknown state: fail every job in flight
        (waiting jobs stay in line) and go on with a fresh batch generator."""
        log.error(
            "engine step failed; failing %d requests in flight",
            len(self._running.in_flight()),
            exc_info=exc,
        )
        self._probe("recover")
        self._running.fail_all(GenerationFailed(f"generation failed: {exc}"))
        self._new_generator()

    def _die(self, exc: BaseException) -> None:
        """The thread cannot go on: say why, fail what was running (500) and waiting (503),
        refuse new work (503), and tell the service, which exits non-zero after its shutdown
        grace so that a supervisor restarts it."""
        self.failure = f"{type(exc).__name__}: {exc}"
        log.critical("the generation thread died: %s", self.failure, exc_info=exc)
        dead = EngineDead(f"the generation thread died ({self.failure}); the server must restart")
        self._admission.refuse(dead)
        running = GenerationFailed(f"generation failed: {self.failure}")
        for step in (
            lambda: self._running.fail_all(running),
            lambda: self._admission.fail_all(dead),
        ):
            try:
                step()
            except Exception:
                log.exception("while failing requests after the generation thread died")
        if self._on_failure is not None and self.ready.is_set():
            self._on_failure(self.failure)

    def prompt_cache_nbytes(self) -> int:
        return self._running.prompt_cache.nbytes
