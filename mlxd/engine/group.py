"""Lockstep: every rank of a group runs the same generation loop on the same jobs.

A tensor- or pipeline-parallel forward pass is a collective: every rank must run the same step
on the same batch, or the group deadlocks. So the engine loop runs unchanged on every rank and
everything it does follows from two kinds of input:

- what only rank 0 sees (requests that arrived, clients that went away, the clock for queue
  timeouts, the shutdown): rank 0 turns it into a ``Decision`` and shares it once per step in
  one small collective (``wire.Channel``); the other ranks act on the same decision at the same
  step. Jobs are replicas on every rank (``Job``s whose events rank 0 forwards to the request and
  the others drop), so the engine's own rules (admission, the KV budget, the prompt cache,
  n > 1, stop strings, the lone-sequence path) decide the same thing everywhere;
- the model's output, the same on every rank: after the last ``all_sum`` (tensor parallel) or
  the ``all_gather`` (pipeline) every rank holds the same hidden state and computes the same
  logits, and a sampled request carries a seed that rank 0 picked, so every rank samples the
  same token with no collective of its own. Each report carries a digest of the text the rank
  emitted; ranks that disagree stop the group rather than serve a corrupt batch.

While sequences run, a decision is applied one step after it was posted: the exchange then
overlaps the step in flight instead of draining the device each step. An idle rank 0 posts at
least every HEARTBEAT_S, so followers know it is alive; a ``Watchdog`` stops a rank whose step
has not finished within the group's step timeout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from mlxd.constrain.enforce import ProcessorFactory
from mlxd.constrain.vocab import TokenVocabulary
from mlxd.engine.admission import _SHUTDOWN, Admission
from mlxd.engine.errors import QueueTimeout
from mlxd.engine.events import Delta, Failed, Finished
from mlxd.engine.job import Job
from mlxd.engine.settings import EngineSettings
from mlxd.engine.watchdog import Watchdog
from mlxd.engine.wire import Arrival, Channel, Decision, Pending, Report, exchange
from mlxd.models.device import device_memory
from mlxd.models.group import Group

log = logging.getLogger("mlxd.engine")

HEARTBEAT_S = 0.5  # an idle rank 0 posts an empty decision this often
# Loading and warming up happen before the first step; a rank may wait for a slower one there
# (a CUDA warm-up compiles kernels for 35-50 s; a large model loads for minutes from a slow disk).
START_TIMEOUT_S = 900.0


class GroupLost(Exception):
    """A rank died, hangs or diverged: the group cannot generate any more."""


def _noop(_event) -> None:
    pass


class Replica(Job):
    """This rank's copy of a job rank 0 took in; ``key`` names it in decisions."""

    def __init__(self, key: int, prompt: list[int], params, emit) -> None:
        super().__init__(prompt, params, emit)
        self.key = key


class Lockstep:
    """One rank's side of the lockstep: the channel, the watchdog and what /health shows.
    ``on_stall(reason)`` runs on the watchdog's thread (followers exit there); rank 0's default
    makes the engine die (``Engine.lost``), which fails in-flight requests and stops the server."""

    def __init__(
        self, group: Group, tokenizer, *, on_stall: Callable[[str], None] | None = None
    ) -> None:
        self.group = group
        self.tokenizer = tokenizer
        self.channel = Channel(group.handle, group.rank, group.size)
        self._on_stall = on_stall
        self._watchdog: Watchdog | None = None
        self._ranks: list[dict] = []  # one record per rank, replaced whole (read by any thread)

    # ----- any thread -----

    def view(self) -> dict:
        """The group for /health and /v1/mlx/status."""
        g = self.group
        return {
            "size": g.size,
            "backend": g.backend,
            "mode": g.mode,
            "step_timeout": g.step_timeout,
            "ranks": self._ranks,
        }

    # ----- the generation thread -----

    def begin(self, engine) -> None:
        """Before loading settles: watch this thread, with the start-up deadline."""

        def stalled(seconds: float) -> None:
            reason = f"no step of the group finished within {seconds:.0f}s: a rank died or hangs"
            if self._on_stall is not None:
                self._on_stall(reason)
            else:
                engine.lost(GroupLost(reason))

        self._watchdog = Watchdog(threading.current_thread(), stalled)
        self._watchdog.start(max(START_TIMEOUT_S, self.group.step_timeout))

    def beat(self) -> None:
        if self._watchdog is not None:
            self._watchdog.beat()

    def agree(
        self, settings: EngineSettings, kv_bytes_per_token: int
    ) -> tuple[EngineSettings, int]:
        """After warm-up: learn every rank's host and memory, and agree on the KV budget in
        tokens (the smallest rank's). Returns this rank's settings and prompt-cache byte limit,
        both scaled to its own KV bytes per token so that every rank's admission and prompt
        cache decide alike."""
        kv = kv_bytes_per_token
        budget = settings.kv_budget_bytes
        mine = {
            "rank": self.group.rank,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(mx.default_device()),
            "device_memory_bytes": device_memory(),
            "model_bytes": mx.get_active_memory(),
            "kv_bytes_per_token": kv,
            "kv_budget_tokens": budget // kv if budget is not None and kv else None,
        }
        g = self.group
        records = [
            json.loads(r) for r in exchange(g.handle, g.rank, g.size, json.dumps(mine).encode())
        ]
        self._ranks = records
        known = [r["kv_budget_tokens"] for r in records if r["kv_budget_tokens"] is not None]
        tokens = min(known) if known else None
        kv0 = records[0]["kv_bytes_per_token"]
        cache_bytes = settings.prompt_cache_bytes
        if kv and kv0:  # the same number of tokens on every rank, whatever its bytes per token
            cache_bytes = settings.prompt_cache_bytes // kv0 * kv
        log.info(
            "group of %d over %s, %s parallel: KV budget %s tokens per rank (the smallest's)",
            g.size,
            g.backend,
            g.mode,
            "unlimited" if tokens is None else tokens,
        )
        if self._watchdog is not None:
            self._watchdog.expect(g.step_timeout)
        kv_budget = None if tokens is None else tokens * kv
        return dataclasses.replace(settings, kv_budget_bytes=kv_budget), cache_bytes

    def exchange_step(self, decision: Decision | None, digest: int) -> Pending:
        report = Report(mx.get_active_memory(), mx.get_peak_memory(), digest)
        return self.channel.post(decision, report)

    def collect(self, pending: Pending) -> Decision:
        decision, reports = self.channel.read(pending)
        self.beat()
        if len({r.digest for r in reports}) > 1:
            raise GroupLost(
                "the ranks generated different text (digests "
                + ", ".join(f"{r.digest:08x}" for r in reports)
                + "); stopping rather than serving a corrupt batch"
            )
        if self._ranks:
            self._ranks = [
                {**rec, "active_bytes": r.active_bytes, "peak_bytes": r.peak_bytes}
                for rec, r in zip(self._ranks, reports, strict=True)
            ]
        return decision

    def local_params(self, params):
        """A decision's sampling parameters with this rank's own constraint vocabulary."""
        c = params.constraint
        if isinstance(c, ProcessorFactory) and c.vocab is None:
            vocab = TokenVocabulary.for_tokenizer(self.tokenizer)
            return dataclasses.replace(params, constraint=dataclasses.replace(c, vocab=vocab))
        return params


class GroupAdmission(Admission):
    """``Admission`` for one rank of a group: the waiting line holds replicas that every rank
    builds from rank 0's decisions, in the same order; ``take`` is where the decision travels."""

    def __init__(self, settings, kv_bytes, lockstep: Lockstep) -> None:
        super().__init__(settings, kv_bytes)
        self._lock = lockstep
        self._leader = lockstep.group.leader
        self._posted: Pending | None = None  # a decision posted last step, not applied yet
        self._replicas: dict[int, Job] = {}  # key -> this rank's copy of a live job
        self._originals: dict[int, Job] = {}  # rank 0: key -> the request's own job
        self._next_key = 0
        self._digest = 0

    def take(self, block: bool) -> bool:
        """Apply the decision posted last step, post this step's; False once rank 0 stops. When
        idle (``block``) the decision is applied at once: there is no step in flight to overlap."""
        self._lock.beat()
        if self._posted is not None:
            posted, self._posted = self._posted, None
            if not self._apply(self._lock.collect(posted)):
                return False
        decision = self._decide(wait=block and not self._waiting) if self._leader else None
        posted = self._lock.exchange_step(decision, self._digest)
        self._digest = 0
        if block:
            return self._apply(self._lock.collect(posted))
        self._posted = posted
        return True

    def expire(self) -> None:
        """Drop cancelled waiting jobs; queue timeouts reach here as cancellations (rank 0's
        clock decides them, in ``_decide``)."""
        for job in [j for j in self._waiting if j.cancelled]:
            self._waiting.remove(job)
            self._unpend()

    def fail_all(self, error) -> None:
        """Also fail what rank 0 decided to take in but no step has applied yet."""
        super().fail_all(error)
        for job in list(self._originals.values()):
            if not job.cancelled:
                job.emit(Failed(error))
        self._originals.clear()

    # ----- rank 0 -----

    def _decide(self, wait: bool) -> Decision:
        items = []
        try:
            items.append(self._inbox.get(timeout=HEARTBEAT_S) if wait else self._inbox.get_nowait())
            while True:
                items.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        arrivals = tuple(self._arrival(job) for job in items if job is not _SHUTDOWN)
        return Decision(arrivals, self._cancellations(), stop=_SHUTDOWN in items)

    def _arrival(self, job: Job) -> Arrival:
        key, self._next_key = self._next_key, self._next_key + 1
        self._originals[key] = job
        params = job.params
        if not params.greedy and params.seed is None:  # every rank must draw the same numbers
            params = dataclasses.replace(params, seed=secrets.randbits(63))
        if isinstance(params.constraint, ProcessorFactory):
            params = dataclasses.replace(params, constraint=params.constraint.portable())
        return Arrival(key, tuple(job.prompt), params)

    def _cancellations(self) -> tuple[int, ...]:
        cancel = [key for key, job in self._originals.items() if job.cancelled]
        limit = self._settings().queue_timeout
        if limit is not None:
            now = time.monotonic()
            for replica in self._waiting:
                key = replica.key  # type: ignore[attr-defined]  # the line holds Replicas here
                if key not in cancel and key in self._originals and now - replica.submitted > limit:
                    self._originals[key].emit(
                        Failed(QueueTimeout(f"the request waited {limit:g}s without starting"))
                    )
                    cancel.append(key)
        for key in cancel:  # asked once; the job is forgotten when the decision is applied
            self._originals.pop(key, None)
        return tuple(cancel)

    # ----- every rank -----

    def _apply(self, decision: Decision) -> bool:
        for arrival in decision.arrivals:
            self._waiting.append(self._replica(arrival))
            if not self._leader:
                with self._pending_lock:
                    self._pending += 1
        for key in decision.cancel:
            replica = self._replicas.pop(key, None)
            if replica is not None:
                replica.cancel()
        return not decision.stop

    def _replica(self, arrival: Arrival) -> Job:
        original = self._originals.get(arrival.key)
        if original is not None and isinstance(original.params.constraint, ProcessorFactory):
            params = dataclasses.replace(arrival.params, constraint=original.params.constraint)
        else:
            params = self._lock.local_params(arrival.params)
        emit = self._emitter(arrival.key, original, params.n)
        replica = Replica(arrival.key, list(arrival.prompt), params, emit)
        if original is not None:
            replica.submitted = original.submitted
        self._replicas[arrival.key] = replica
        return replica

    def _emitter(self, key: int, original: Job | None, choices: int) -> Callable[[Any], None]:
        forward = original.emit if original is not None else _noop
        finished = 0

        def emit(event) -> None:
            nonlocal finished
            match event:
                case Delta(index=i, text=text):
                    self._digest = zlib.crc32(f"{key}:{i}:{text}".encode(), self._digest)
                case Finished(index=i, reason=reason):
                    self._digest = zlib.crc32(f"{key}:{i}:{reason}".encode(), self._digest)
                    finished += 1
                case Failed():
                    finished = choices
            forward(event)
            if finished >= choices:
                self._replicas.pop(key, None)
                self._originals.pop(key, None)

        return emit
