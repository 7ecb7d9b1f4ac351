"""What runs on the generation thread: each choice's ``Seq``, the followers parked on a leader
(prefix.py), the lone solo run (solo.py), and mlx-lm's ``BatchGenerator`` with its pacer
(schedule.py), stepped once per loop iteration.

Only the generation thread touches a ``Running`` (the event loop reads ``len(seqs)``). The engine
(loop.py) decides what starts and when, ``Placement`` (placement.py) decides where a new job's
choices start, and this module steps them, emits their tokens, ends them and keeps each finished
sequence's KV cache for prompts that share its prefix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models.cache import LRUPromptCache

from mlxd.engine import buffers, steptrace, vision
from mlxd.engine.emit import emit_token
from mlxd.engine.errors import EngineError, GenerationFailed
from mlxd.engine.events import Failed
from mlxd.engine.job import EngineStats, Job, Seq
from mlxd.engine.kvcache import CacheMaker
from mlxd.engine.prefix import Follower, Followers, cut_for
from mlxd.engine.sampling import make_processors, make_sampler
from mlxd.engine.schedule import Pacer
from mlxd.engine.settings import EngineSettings
from mlxd.engine.solo import SOLO_UID, SoloRun
from mlxd.engine.textstream import StopScanner, TextStream

log = logging.getLogger(__name__)

CLEAR_CACHE_EVERY = 256  # decode steps between returns of MLX's buffer cache
PROMPT_CACHE_KEY = "model"  # one model per engine; its weights' copy may change (calibration)


class Running:
    """``probe(point)`` is the engine's test seam (loop.PROBE_POINTS); ``strict``: one rank of
    a group, where a failed step must stop the group instead of failing one request."""

    def __init__(
        self,
        tokenizer,
        stats: EngineStats,
        settings: Callable[[], EngineSettings],
        probe: Callable[[str], None],
        strict: bool,
    ) -> None:
        # Fixed for the engine's life.
        self._tokenizer = tokenizer
        self._stats = stats
        self._settings = settings
        self._probe = probe
        self._strict = strict
        # The machinery; the engine makes it and swaps it between steps.
        self.gen: BatchGenerator  # made before the first job
        self.pacer: Pacer  # made with it
        self.new_cache: CacheMaker  # set at warm-up
        self.prompt_cache = LRUPromptCache(max_bytes=settings().prompt_cache_bytes)
        # The choices in flight.
        self.seqs: dict[int, Seq] = {}
        self.followers = Followers()  # choices waiting for a leader's first token
        self.solo: SoloRun | None = None  # the lone sequence, while nothing else runs
        self._trace = steptrace.from_env()  # profiling only (MLXD_STEP_TRACE)

    # ----- bookkeeping -----

    def occupancy(self) -> tuple[int, int]:
        """Choices running or following, and the KV bytes they reserve."""
        waiting = self.followers.waiting()
        reserved = sum(s.reserved for s in self.seqs.values()) + sum(f.need for f in waiting)
        return len(self.seqs) + len(waiting), reserved

    def in_flight(self) -> set[Job]:
        return {seq.job for seq in self.seqs.values()} | {f.job for f in self.followers.waiting()}

    def track(self, uid: int, job: Job, index: int, need: int, cached_tokens: int = 0) -> None:
        """Register a running choice: its text stream, and its KV bytes against the budget."""
        text = TextStream(self._tokenizer.detokenizer, StopScanner(job.params.stop))
        self.seqs[uid] = Seq(job, index, text, need, cached_tokens=cached_tokens)

    def release(self, uid: int) -> None:
        self.seqs.pop(uid)
        self.pacer.forget(uid)

    def drop_cancelled(self) -> list[Follower]:
        """Forget cancelled choices; the followers whose leader went before its first token
        (they must start another way)."""
        gone = [uid for uid, seq in self.seqs.items() if seq.job.cancelled]
        if SOLO_UID in gone:
            self.solo = None
        if any(uid != SOLO_UID for uid in gone):
            self.gen.remove([uid for uid in gone if uid != SOLO_UID])
        for uid in gone:
            self.release(uid)
        return self.followers.drop(gone)

    def fail_all(self, error: EngineError) -> None:
        """Fail every job in flight and forget them (the batch is no longer trusted)."""
        for job in self.in_flight():
            job.emit(Failed(error))
        self.solo = None
        self.seqs.clear()
        self.followers.clear()

    # ----- starting choices -----

    def insert_choice(self, job: Job, index: int, rest, cache, cached_tokens, need: int) -> int:
        """Choice ``index`` of ``job`` joins the batch, ``cached_tokens`` already in ``cache``."""
        p = job.params
        cache = cache or self.new_cache()  # None: mlx-lm makes its own
        [uid] = self.gen.insert(
            [list(rest)],
            max_tokens=[p.max_tokens],
            caches=None if cache is None else [cache],
            all_tokens=[list(cached_tokens)],
            samplers=[make_sampler(p, index)],
            logits_processors=[make_processors(p, len(job.prompt))],
        )
        self.pacer.add(uid, len(rest))
        self.track(uid, job, index, need, cached_tokens=len(cached_tokens))
        self._stats.prompt_tokens += len(rest)
        self._stats.reused_tokens += len(cached_tokens)
        return uid

    def _start_followers(self, leader) -> None:
        """The leader's prompt is in its cache: each follower copies the part it shares and
        prefills the rest (the n choices of one job share the whole prompt)."""
        self._probe("followers")
        followers = self.followers.pop(leader.uid)
        if leader.prompt_cache is not None:  # the leader already ended (eos or max_tokens 1)
            cache, tokens = leader.prompt_cache, leader.all_tokens
        else:
            ((cache, tokens),) = self.gen.extract_cache([leader.uid]).values()
        tokens = list(tokens)
        for f in followers:
            mine, shared = cut_for(cache, tokens, f.job.prompt)
            if f.index == 0:
                self._stats.shared_starts += 1
            rest, cached = f.job.prompt[shared:], f.job.prompt[:shared]
            self.insert_choice(f.job, f.index, rest, mine, cached, f.need)

    # ----- the solo path (solo.py) -----

    def hand_solo_to_batch(self) -> None:
        """Another request arrived: the lone sequence continues inside the batch."""
        self._probe("handoff")
        solo, seq = self.solo, self.seqs[SOLO_UID]
        assert solo is not None  # the engine checked
        last = solo.read_pending()
        if last is not None and self._on_token(seq, last):
            self._end_solo()
            return
        self.solo = None
        uid, to_feed = solo.continue_in(self.gen, last)
        self.pacer.add(uid, to_feed)
        self.seqs[uid] = self.seqs.pop(SOLO_UID)

    def _solo_step(self) -> None:
        seq, solo = self.seqs[SOLO_UID], self.solo
        assert solo is not None  # step checked
        started = time.perf_counter()
        try:
            out = solo.step()
        except Exception as exc:
            if self._strict:
                raise  # a collective failed, or the ranks no longer agree: the group stops
            log.exception("generation step failed")
            seq.job.emit(Failed(GenerationFailed(f"generation failed: {exc}")))
            self.solo = None
            self.release(SOLO_UID)
            return
        if self._trace is not None:
            self._trace.record(time.perf_counter() - started, 1, 0, 0, 0, solo=True)
        if out is not None and self._on_token(seq, out):
            self._end_solo()

    def _end_solo(self) -> None:
        solo, self.solo = self.solo, None
        assert solo is not None  # only a running solo ends
        self._keep_cache(self.seqs[SOLO_UID].job, solo.fed, solo.cache)
        self.release(SOLO_UID)

    # ----- one step -----

    def step(self, cuda: bool) -> None:
        """One decode step (with prefill chunks) of every running choice; ``cuda``: keep MLX's
        buffers across it (buffers.py)."""
        if self.solo is not None:
            self._solo_step()
            return
        self.pacer.before(self.gen)
        self._probe("step")
        started = time.perf_counter()
        with buffers.kept(cuda):
            progress, responses = self.gen.next()
        seconds = time.perf_counter() - started
        if self.pacer.after(progress, seconds):
            self._stats.prefill_steps += 1
        if self._trace is not None:
            ended = sum(r.finish_reason is not None for r in responses)
            self._trace.record(seconds, *self.pacer.last, ended)
        self._stats.steps += 1
        if self._stats.steps % CLEAR_CACHE_EVERY == 0:
            mx.clear_cache()
        finished = []
        for r in responses:
            seq = self.seqs.get(r.uid)
            if seq is None:
                continue
            if r.uid in self.followers:
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
            ((cache, tokens),) = self.gen.remove([r.uid], return_prompt_caches=True).values()
        self._keep_cache(self.seqs[r.uid].job, tokens, cache)
        self.release(r.uid)

    def _keep_cache(self, job: Job, tokens, cache) -> None:
        """Offer a finished sequence's KV cache to prompts that share its prefix (images keyed
        by their hash)."""
        if self._settings().prompt_cache_bytes > 0 and tokens:
            key = vision.cache_tokens(job.prompt, job.vision, list(tokens))
            self.prompt_cache.insert_cache(PROMPT_CACHE_KEY, key, cache)
