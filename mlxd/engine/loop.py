"""The one generation thread: it owns the model, takes jobs from a ``queue.Queue`` and sends typed
events back through each job's ``emit`` callback (the server wraps ``loop.call_soon_threadsafe``).

Scheduling is continuous batching on mlx-lm's ``BatchGenerator``: between two decode steps the
thread admits waiting jobs (within ``max_batch_size`` and the KV memory budget), drops cancelled
ones, and prefills new prompts in chunks that fit the step's token budget (schedule.py), so
running streams keep flowing. A prompt that shares a long beginning with a running one starts
from that sequence's cache (prefix.py). Layering follows mlx-lm: token ids -> ``TextStream``
(safe text deltas) -> our events (emit.py) -> the API.

Which submitted job starts when is admission.py's; ``Job`` and ``Seq`` are in job.py and
``EngineSettings`` in settings.py (all three importable from here as before).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import LRUPromptCache, trim_prompt_cache

from mlxd.engine import attention, buffers, vision, warmup
from mlxd.engine.admission import Admission
from mlxd.engine.calibration import IDLE_BEFORE_S, Weights
from mlxd.engine.emit import emit_token
from mlxd.engine.errors import (
    EngineDead,
    EngineError,
    GenerationFailed,
    ShuttingDown,
    out_of_vocabulary,
    vocabulary_error,
)
from mlxd.engine.events import Delta, Failed, Finished
from mlxd.engine.group import GroupAdmission, Lockstep
from mlxd.engine.job import EngineStats, Job, Seq
from mlxd.engine.kvcache import CacheMaker
from mlxd.engine.prefix import Followers, cut_for, find_source
from mlxd.engine.sampling import SamplingParams, make_processors, make_sampler
from mlxd.engine.schedule import Pacer, StepBudget
from mlxd.engine.settings import EngineSettings
from mlxd.engine.solo import SOLO_UID, SoloRun
from mlxd.engine.textstream import StopScanner, TextStream

# Re-exported: callers and tests import these from here.
__all__ = ["Delta", "Engine", "EngineSettings", "Failed", "Finished", "Job", "SamplingParams"]

log = logging.getLogger(__name__)

CLEAR_CACHE_EVERY = 256  # decode steps between returns of MLX's buffer cache
PROMPT_CACHE_KEY = "model"  # one model per engine; its weights' copy may change (calibration)


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
        self._seqs: dict[int, Seq] = {}
        self._followers = Followers()  # choices waiting for a leader's first token
        self._gen: BatchGenerator  # made by _run, before the first job
        self._pacer: Pacer  # made with it
        self._solo: SoloRun | None = None  # the lone sequence, while nothing else runs
        self._prompt_cache = LRUPromptCache(max_bytes=self.settings.prompt_cache_bytes)
        self._weights = Weights(model, self.settings)
        self._idle_since = time.monotonic()
        self._cuda = attention.wanted()
        self._new_cache = CacheMaker(model, None, 0, False)  # set at warm-up
        # Learnt at warm-up.
        self.vocab_size = 0  # the model's output width
        self.kv_bytes_per_token: int = 0  # what a token costs once the cache is quantized
        self._kv_full_bytes_per_token = 0

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
        return len(self._seqs)

    def kv_bytes(self, tokens: int) -> int:
        """KV bytes ``tokens`` tokens of one sequence may hold (full precision up to
        --quantized-kv-start, then quantized)."""
        full = min(tokens, self.settings.quantized_kv_start) if self.settings.kv_bits else tokens
        return full * self._kv_full_bytes_per_token + (tokens - full) * self.kv_bytes_per_token

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
            attention.install_for(getattr(self.model, "quantized", self.model))
        try:
            self._weights.begin(self._on_phase)
            self._use_weights()
        except Exception as exc:
            log.exception("weight calibration failed")
            self.failure = f"weight calibration failed: {exc}"
            return False
        self._gen = self._new_generator()
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
            self._prompt_cache = LRUPromptCache(max_bytes=cache_bytes)
        self._idle_since = time.monotonic()
        return True

    def _new_generator(self) -> BatchGenerator:
        s = self.settings
        self._pacer = Pacer(
            StepBudget(s.max_step_tokens),
            s.prefill_step_size,
            min(s.prefill_batch_size or s.max_batch_size, s.max_batch_size),
        )
        return BatchGenerator(
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
        while self._admission.take(block=not self._seqs):
            try:
                self._probe("iteration")
                self._iteration()
            except Exception as exc:
                if self._lockstep is not None:
                    raise  # the ranks may no longer agree on the batch: the group cannot go on
                self._recover(exc)
        stopping = ShuttingDown("the server shut down before this request finished")
        self._fail_in_flight(stopping)
        self._admission.fail_all(stopping)

    def _iteration(self) -> None:
        self._admission.expire()
        self._drop_cancelled()
        if self._solo is not None and self._admission.has_waiting:
            self._hand_solo_to_batch()
        self._start_waiting()
        if self._seqs:
            self._step()
            self._idle_since = time.monotonic()
        elif self._weights.measuring and self._idle_for(IDLE_BEFORE_S):
            if self._weights.when_idle():  # the dense copy went
                self._use_weights()
                self._gen = self._new_generator()  # idle: nothing runs in the old one

    def _idle_for(self, seconds: float) -> bool:
        return time.monotonic() - self._idle_since >= seconds and not self._admission.has_waiting

    def _warm_up(self) -> None:
        s = self.settings
        if s.kv_bits is not None and self.vlm is not None:  # image prefill makes its own caches
            raise ValueError("--kv-bits does not work with a vision-language model yet")
        # On CUDA there is no quantized attention kernel: caches dequantize for it (kvcache.py).
        self._new_cache = CacheMaker(self.model, s.kv_bits, s.quantized_kv_start, self._cuda)
        done = warmup.run(self._gen, self.tokenizer, s.prefill_step_size, self._new_cache)
        self.vocab_size = done.vocab_size
        self._kv_full_bytes_per_token = self.kv_bytes_per_token = done.kv_bytes_per_token
        how = ""
        if s.kv_bits is not None:
            self.kv_bytes_per_token = done.kv_quantized_bytes_per_token
            how = f", {s.kv_bits}-bit: {self.kv_bytes_per_token} from token {s.quantized_kv_start}"
        per_token = done.kv_bytes_per_token
        log.info("warm-up done in %.2fs (KV cache %d bytes/token%s)", done.seconds, per_token, how)

    def _drop_cancelled(self) -> None:
        gone = [uid for uid, seq in self._seqs.items() if seq.job.cancelled]
        if SOLO_UID in gone:
            self._solo = None
        if any(uid != SOLO_UID for uid in gone):
            self._gen.remove([uid for uid in gone if uid != SOLO_UID])
        for uid in gone:
            self._release(uid)
        for orphan in self._followers.drop(gone):  # their leader went before its first token
            self._start(orphan.job, orphan.need)

    def _occupancy(self) -> tuple[int, int]:
        """Choices running or following, and the KV bytes they reserve."""
        waiting = self._followers.waiting()
        reserved = sum(s.reserved for s in self._seqs.values()) + sum(f.need for f in waiting)
        return len(self._seqs) + len(waiting), reserved

    def _start_waiting(self) -> None:
        while started := self._admission.next_to_start(*self._occupancy()):
            self._start(*started)

    def _start(self, job: Job, need: int) -> None:
        try:
            self._insert(job, need)
        except Exception as exc:
            log.exception("could not start a job")
            job.emit(Failed(GenerationFailed(f"could not start: {exc}")))

    def _insert(self, job: Job, need: int) -> None:
        self._probe("admit")
        bad = out_of_vocabulary(job.prompt, self.vocab_size)
        if bad is not None:
            job.emit(Failed(vocabulary_error(bad, self.vocab_size, "prompt")))
            return
        cache, cached, hit = self._cached_prefix(job)
        source = self._shared_source(job, cached)
        if source is not None and not source.ready:  # follow it: start with its first token
            self._followers.add(source.uid, job, need)
            return
        if source is not None:
            ((leader, tokens),) = self._gen.extract_cache([source.uid]).values()
            cache, cached = cut_for(leader, list(tokens), job.prompt)
            hit = cached
            self.stats.shared_starts += 1
        rest = job.prompt[cached:]
        alone = not self._seqs and not self._admission.has_waiting
        if self.settings.solo and job.params.n == 1 and alone:
            self._start_solo(job, rest, cache, job.prompt[:cached], need)
            self._seqs[SOLO_UID].cached_tokens = hit
            return
        uid = self._insert_choice(job, 0, rest, cache, job.prompt[:cached], need)
        self._seqs[uid].cached_tokens = hit
        if job.params.n > 1:
            self._followers.add(uid, job, need, first=1)

    def _shared_source(self, job: Job, cached: int):
        """A running sequence whose prompt begins like ``job``'s (prefix.py); text only: an
        image's placeholder tokens are alike whatever the image."""
        if job.vision is not None:
            return None
        running = {
            uid: (seq.job.prompt, self._pacer.decoding(uid))
            for uid, seq in self._seqs.items()
            if uid != SOLO_UID and seq.job.vision is None
        }
        return find_source(job.prompt, cached, running)

    def _cached_prefix(self, job: Job) -> tuple[list | None, int, int]:
        """(KV cache, prompt tokens it holds, of which the prompt cache gave): the longest cached
        prefix, then, for a vision job, its images prefilled after it (engine/vision.py)."""
        key = vision.cache_key(job.prompt, job.vision)
        cache, rest = self._prompt_cache.fetch_nearest_cache(PROMPT_CACHE_KEY, key)
        if cache is not None and not rest:  # all cached: recompute the last token for logits
            trim_prompt_cache(cache, 1)
            rest = key[-1:]
        hit = cached = len(job.prompt) - len(rest)
        if job.vision is not None and vision.needs_prefill(job.prompt, job.vision, cached):
            step = self.settings.prefill_step_size
            cache = vision.prefill(
                self.vlm, self.model, job.prompt, job.vision, cache, cached, step
            )
            cached = len(job.prompt) - 1
        return cache, cached, hit

    def _insert_choice(self, job: Job, index: int, rest, cache, cached_tokens, need: int) -> int:
        p = job.params
        cache = cache or self._new_cache()  # None: mlx-lm makes its own
        [uid] = self._gen.insert(
            [list(rest)],
            max_tokens=[p.max_tokens],
            caches=None if cache is None else [cache],
            all_tokens=[list(cached_tokens)],
            samplers=[make_sampler(p, index)],
            logits_processors=[make_processors(p, len(job.prompt))],
        )
        self._pacer.add(uid, len(rest))
        self._track(uid, job, index, need, cached_tokens=len(cached_tokens))
        self.stats.prompt_tokens += len(rest)
        self.stats.reused_tokens += len(cached_tokens)
        return uid

    def _track(self, uid: int, job: Job, index: int, need: int, cached_tokens: int = 0) -> None:
        """Register a running choice: its text stream, and its KV bytes against the budget."""
        text = TextStream(self.tokenizer.detokenizer, StopScanner(job.params.stop))
        self._seqs[uid] = Seq(job, index, text, need, cached_tokens=cached_tokens)

    def _start_solo(self, job: Job, rest, cache, cached_tokens, need: int) -> None:
        p = job.params
        self._solo = SoloRun(
            self.model,
            list(rest),
            cache if cache is not None else self._new_cache(),
            list(cached_tokens),
            make_sampler(p),
            make_processors(p, len(job.prompt)),
            p.max_tokens,
            self.settings.prefill_step_size,
            set(self.tokenizer.eos_token_ids),
        )
        self._track(SOLO_UID, job, 0, need, cached_tokens=len(cached_tokens))
        self.stats.prompt_tokens += len(rest)
        self.stats.reused_tokens += len(cached_tokens)

    def _solo_step(self) -> None:
        seq, solo = self._seqs[SOLO_UID], self._solo
        assert solo is not None  # _step checked
        try:
            out = solo.step()
        except Exception as exc:
            if self._lockstep is not None:
                raise  # a collective failed, or the ranks no longer agree: the group stops
            log.exception("generation step failed")
            seq.job.emit(Failed(GenerationFailed(f"generation failed: {exc}")))
            self._solo = None
            self._release(SOLO_UID)
            return
        if out is not None and self._on_token(seq, out):
            self._end_solo()

    def _end_solo(self) -> None:
        solo, self._solo = self._solo, None
        assert solo is not None  # only a running solo ends
        self._keep_cache(self._seqs[SOLO_UID].job, solo.fed, solo.cache)
        self._release(SOLO_UID)

    def _hand_solo_to_batch(self) -> None:
        """Another request arrived: the lone sequence continues inside the batch."""
        self._probe("handoff")
        solo, seq = self._solo, self._seqs[SOLO_UID]
        assert solo is not None  # _run checked
        last = solo.read_pending()
        if last is not None and self._on_token(seq, last):
            self._end_solo()
            return
        self._solo = None
        uid, to_feed = solo.continue_in(self._gen, last)
        self._pacer.add(uid, to_feed)
        self._seqs[uid] = self._seqs.pop(SOLO_UID)

    def _start_followers(self, leader) -> None:
        """The leader's prompt is in its cache: each follower copies the part it shares and
        prefills the rest (the n choices of one job share the whole prompt)."""
        self._probe("followers")
        followers = self._followers.pop(leader.uid)
        if leader.prompt_cache is not None:  # the leader already ended (eos or max_tokens 1)
            cache, tokens = leader.prompt_cache, leader.all_tokens
        else:
            ((cache, tokens),) = self._gen.extract_cache([leader.uid]).values()
        tokens = list(tokens)
        for f in followers:
            mine, shared = cut_for(cache, tokens, f.job.prompt)
            if f.index == 0:
                self.stats.shared_starts += 1
            rest, cached = f.job.prompt[shared:], f.job.prompt[:shared]
            self._insert_choice(f.job, f.index, rest, mine, cached, f.need)

    def _step(self) -> None:
        if self._solo is not None:
            self._solo_step()
            return
        self._pacer.before(self._gen)
        self._probe("step")
        started = time.perf_counter()
        with buffers.kept(self._cuda):
            progress, responses = self._gen.next()
        if self._pacer.after(progress, time.perf_counter() - started):
            self.stats.prefill_steps += 1
        self.stats.steps += 1
        if self.stats.steps % CLEAR_CACHE_EVERY == 0:
            mx.clear_cache()
        finished = []
        for r in responses:
            seq = self._seqs.get(r.uid)
            if seq is None:
                continue
            if r.uid in self._followers:
                self._start_followers(r)
            if self._on_token(seq, r):
                finished.append(r)
        for r in finished:
            self._finish_seq(r)

    def _on_token(self, seq: Seq, r) -> bool:
        """Emit what token ``r`` adds; True when the sequence has ended."""
        self._probe("emit")
        return emit_token(seq, r)

    def _finish_seq(self, r) -> None:
        """Forget a finished sequence; keep its KV cache for prompts that share its prefix."""
        self._probe("finish")
        if r.finish_reason is not None and r.prompt_cache is not None:
            cache, tokens = r.prompt_cache, r.all_tokens
        else:  # ended by a stop string: still decoding inside the batch, take it out
            ((cache, tokens),) = self._gen.remove([r.uid], return_prompt_caches=True).values()
        self._keep_cache(self._seqs[r.uid].job, tokens, cache)
        self._release(r.uid)

    def _keep_cache(self, job: Job, tokens, cache) -> None:
        """Offer a finished sequence's KV cache to prompts that share its prefix (images keyed
        by their hash)."""
        if self.settings.prompt_cache_bytes > 0 and tokens:
            key = vision.cache_tokens(job.prompt, job.vision, list(tokens))
            self._prompt_cache.insert_cache(PROMPT_CACHE_KEY, key, cache)

    def _release(self, uid: int) -> None:
        self._seqs.pop(uid)
        self._pacer.forget(uid)

    def _recover(self, exc: Exception) -> None:
        """A failed iteration leaves the batch in an unknown state: fail every job in flight
        (waiting jobs stay in line) and go on with a fresh batch generator."""
        log.error(
            "engine step failed; failing %d requests in flight",
            len(self._in_flight()),
            exc_info=exc,
        )
        self._probe("recover")
        self._fail_in_flight(GenerationFailed(f"generation failed: {exc}"))
        self._gen = self._new_generator()  # and a fresh pacer

    def _in_flight(self) -> set[Job]:
        return {seq.job for seq in self._seqs.values()} | {f.job for f in self._followers.waiting()}

    def _fail_in_flight(self, error: EngineError) -> None:
        for job in self._in_flight():
            job.emit(Failed(error))
        self._solo = None
        self._seqs.clear()
        self._followers.clear()

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
            lambda: self._fail_in_flight(running),
            lambda: self._admission.fail_all(dead),
        ):
            try:
                step()
            except Exception:
                log.exception("while failing requests after the generation thread died")
        if self._on_failure is not None and self.ready.is_set():
            self._on_failure(self.failure)

    def prompt_cache_nbytes(self) -> int:
        return self._prompt_cache.nbytes
