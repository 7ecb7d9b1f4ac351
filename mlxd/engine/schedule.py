"""Chunked prefill: how many prompt tokens one engine step computes beside the streams that
decode, in the spirit of vLLM's chunked prefill and Sarathi-Serve.

Every engine step runs one decode forward for the running streams, then at most one prefill
forward (mlx-lm's ``BatchGenerator``): a chunk of each prompt in the prefill batch, padded to the
longest chunk. Unbounded, a burst of long prompts made that forward hundreds of milliseconds and
every running stream waited for it (H200, 8B: inter-token p99 193 ms against a p50 of 17 ms).
So each step has a prefill budget in tokens:

- ``--max-step-tokens N``: N tokens per step, decode tokens counted (one per stream), as vLLM's
  ``max_num_batched_tokens``;
- auto: while streams decode, the budget adapts so that a step that prefills takes about
  ``TARGET_STEP_RATIO`` decode-only steps (timed as the engine runs); when nothing decodes, or more
  prompts wait to prefill than streams decode, a step may prefill ``UNTHROTTLED_TOKENS`` (a burst
  of new requests gets its first tokens sooner, and few streams pay for it).

``plan`` then cuts the budget into rows (prompts) and a chunk length, first come first served,
on CUDA the chunk one of a few sizes (``piece_size``): MLX's CUDA backend pays for each new
shape.
"""

from __future__ import annotations

import collections
import logging
import statistics
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A step moves prompts on however many streams decode: a budget smaller than the batch would
# otherwise starve them.
MIN_PREFILL_TOKENS = 32
# One step's prompt tokens when nothing needs protecting: 8 chunks of 512 (issue 8: a burst of 64
# short prompts joining the batch in one group decoded 2541 tok/s on an H100, in groups of 4 830).
UNTHROTTLED_TOKENS = 4096
# A step that prefills takes about this many decode-only steps (auto). Below 3, so the running
# streams' inter-token p99 stays within 3x their p50 (issue 15) even when only a few steps
# prefill; above 2, because a prefill forward reads every weight once whatever its length (on an
# H200, 8B: 128 tokens dense took 15-19 ms against 7-10 ms for a decode step).
TARGET_STEP_RATIO = 2.5
START_TOKENS = 256  # the adaptive budget before anything was timed, on a GPU
# On a CPU a prompt token beside decoding streams costs far more: SmolLM2 on this project's 2-core
# CPU took ~30 s for a first 256-token chunk beside 8 streams whose decode step took 1.2 s (the
# decoders' inter-token p99 was 25x their p50). There the budget starts at the bottom and grows.
CPU_START_TOKENS = MIN_PREFILL_TOKENS
SLOW_STEP_S = 0.1  # a step this long is logged (debug) with what it did
EMA = 0.25  # weight of the newest timing in the adaptive budget's running average
# A decode step's time is the median of the last few decode-only steps: one slow step (a batch
# joining, a KV cache growing) once drove an average up 3x and the budget with it (H200, 8B:
# prefill steps of 120-210 ms beside 29 ms decode steps).
DECODE_SAMPLES = 15
MAX_ADJUST = 2.0  # the adaptive budget changes by at most this factor per step
# A prefill step whose cost per prompt token is this many times the median of the recent ones
# is an outlier (a first-use kernel compile, a cache growing), not the device's pace: it does not
# move the budget. On an H200 (8B) four such steps (120-166 ms for 75-98 tokens beside 32
# decodes, against 25-30 ms for 512 tokens elsewhere) shrank the budget from 102 to 78 tokens,
# and 16 long prompts then took 15.9 s to their first token.
OUTLIER_COST = 4.0
COST_SAMPLES = 15  # recent per-token prefill costs kept to judge a new one
MIN_COST_SAMPLES = 3  # judged only once this many are known


# Prompt pieces come in a few sizes: four per octave (8, 10, 12, 14, 16, 20, ... 448, 512, 640,
# ...), exact below 8. On an H200 (8B, CUDA) a prefill piece of a length never run before took
# 42-62 ms and one seen before 16-19 ms beside 32 decodes (bench/join_cost.py --chunks; the
# cached prefix's length, new every step, costs little): an adaptive budget moving by a few
# tokens made nearly every throttled step a new shape.
EXACT_BELOW = 8
STEPS_PER_OCTAVE = 4


def piece_size(n: int) -> int:
    """The largest piece size not above ``n`` (n itself below ``EXACT_BELOW``)."""
    if n < EXACT_BELOW:
        return max(n, 1)
    octave = 1 << (n.bit_length() - 1)  # the power of two at or below n
    step = max(octave // STEPS_PER_OCTAVE, 1)
    return n - (n - octave) % step


@dataclass(frozen=True)
class StepPlan:
    rows: int  # prompts in the prefill batch this step (BatchGenerator.prefill_batch_size)
    chunk: int  # tokens per prompt this step (BatchGenerator.prefill_step_size)


class StepBudget:
    """Prompt tokens per step: ``fixed`` (--max-step-tokens) or adaptive (None), from
    ``start`` tokens."""

    def __init__(self, fixed: int | None = None, start: int = START_TOKENS) -> None:
        self.fixed = fixed
        self.tokens = float(start)  # adaptive budget while streams decode
        self._decodes: collections.deque[float] = collections.deque(maxlen=DECODE_SAMPLES)
        self._costs: collections.deque[float] = collections.deque(maxlen=COST_SAMPLES)

    @property
    def decode_s(self) -> float | None:
        """A decode-only step's time (median of the recent ones), None before any."""
        return statistics.median(self._decodes) if self._decodes else None

    def prefill_tokens(self, decoding: int, waiting: int) -> int:
        """The budget for one step with ``decoding`` streams and ``waiting`` prompts to fill."""
        if self.fixed is not None:
            return max(self.fixed - decoding, MIN_PREFILL_TOKENS)
        if decoding == 0 or waiting > decoding:
            return UNTHROTTLED_TOKENS
        return int(self.tokens)

    def observe(
        self, seconds: float, decoding: int, prefilled: int, budget: int, joined: int = 0
    ) -> None:
        """A step took ``seconds`` with ``decoding`` streams and ``prefilled`` prompt tokens
        (padding included) under ``budget``, ``joined`` sequences moving from prefill to
        decoding; learn from it (adaptive mode). Steps where sequences joined cost more for a
        reason the budget does not control: they teach nothing."""
        if self.fixed is not None or decoding == 0 or seconds <= 0 or joined:
            return
        if prefilled == 0:
            self._decodes.append(seconds)
            return
        decode_s = self.decode_s
        if decode_s is None or budget >= UNTHROTTLED_TOKENS or prefilled < self.tokens / 2:
            return  # nothing to compare with, not a throttled step, or too little to judge
        allowed = (TARGET_STEP_RATIO - 1) * decode_s
        spent = max(seconds - decode_s, 1e-6)
        # Judged against the recent costs, then kept among them: a pace that lasts (a slower
        # device, longer contexts) becomes the median within a few steps and teaches again.
        cost = spent / prefilled
        usual = statistics.median(self._costs) if len(self._costs) >= MIN_COST_SAMPLES else None
        self._costs.append(cost)
        if usual is not None and cost > OUTLIER_COST * usual:
            log.debug("prefill step of %.0f ms for %d tokens: an outlier", seconds * 1e3, prefilled)
            return
        scaled = prefilled * allowed / spent
        scaled = min(max(scaled, self.tokens / MAX_ADJUST), self.tokens * MAX_ADJUST)
        self.tokens = min(
            max(_average(self.tokens, scaled), MIN_PREFILL_TOKENS), UNTHROTTLED_TOKENS
        )


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - EMA) * old + EMA * new


def plan(
    budget: int,
    remaining: list[int],
    started: int,
    chunk_cap: int,
    max_rows: int,
    pieces: bool = False,
    throttled: bool = False,
) -> StepPlan:
    """Rows and chunk for one step. ``remaining``: prompt tokens each prefilling sequence still
    has to compute, first come first; the first ``started`` are already in the prefill batch
    (mlx-lm advances all of them every step). Picks the number of rows that computes the most
    prompt tokens within ``budget`` (rows x the longest row's chunk: shorter ones are padded),
    the fewest rows on a tie (the oldest prompt finishes first).

    ``throttled`` (the budget protects decoding streams): a row is added only while at most one
    row of the step is left unfinished after it (or as many as were already started). A long
    prompt started beside another unfinished one shares every later step's budget with it, for
    good: a step of 32 tokens on this project's CPU ran 3 prompts of 10 tokens for 54 steps
    instead of one of 32, and an H200 ran up to 15 rows of 10-40 tokens (each row attending to
    its own ~1250-token prefix). ``pieces``: the chunk is a ``piece_size``; when throttled the
    pieces of prompts that fit it are cut the same way, otherwise they are computed whole,
    padded to the longest (a step more weighs as much as a new shape when nothing decodes)."""
    started = min(started, len(remaining))
    lowest = max(started, 1)
    highest = max(min(len(remaining), max_rows), lowest)
    best = StepPlan(lowest, max(min(chunk_cap, budget // lowest), 1))
    best_useful = -1
    for rows in range(lowest, highest + 1):
        chunk = max(min(chunk_cap, budget // rows), 1)
        head = remaining[:rows]
        if rows > lowest and rows * min(chunk, max(head, default=0)) > budget:
            break
        if throttled and rows > lowest:
            unfinished = sum(r > chunk for r in head)
            if unfinished > max(1, sum(r > chunk for r in head[:lowest])):
                break
        useful = sum(min(chunk, r) for r in head)
        if useful > best_useful:
            best, best_useful = StepPlan(rows, chunk), useful
    widest = max(remaining[: best.rows], default=1)
    if pieces and (widest > best.chunk or throttled):  # the widest piece is the shape
        return StepPlan(best.rows, piece_size(min(best.chunk, widest)))
    return best


@dataclass
class _Row:
    to_prefill: int  # prompt tokens the BatchGenerator computes before the first token
    done: int = 0  # of them computed so far
    started: bool = False  # in mlx-lm's prefill batch (it advances every such row each step)
    decoding: bool = False  # the prompt is in the cache; the first token is on its way


class Pacer:
    """Per-step prefill for a ``BatchGenerator``: tracks each sequence's prompt progress (from
    the progress reports ``next()`` returns), sets the step's rows and chunk before it, and times
    the step after it."""

    def __init__(
        self, budget: StepBudget, chunk_cap: int, max_rows: int, pieces: bool = False
    ) -> None:
        self.budget, self.chunk_cap, self.max_rows = budget, chunk_cap, max_rows
        self.pieces = pieces  # prompt pieces of a few sizes only
        self._rows: dict[int, _Row] = {}  # uid -> progress, in insertion (= mlx-lm's) order
        self._step_budget = 0
        self.last = (0, 0, 0)  # the last step's (decoding, prompt tokens computed, joined)

    def add(self, uid: int, prompt_tokens: int) -> None:
        """A sequence was inserted with ``prompt_tokens`` left to feed (the last one included)."""
        self._rows[uid] = _Row(max(prompt_tokens - 1, 0))

    def forget(self, uid: int) -> None:
        self._rows.pop(uid, None)

    def decoding(self, uid: int) -> bool:
        row = self._rows.get(uid)
        return row is not None and row.decoding

    def before(self, gen) -> None:
        """Set ``gen``'s prefill batch size and step size for its next step."""
        rows = self._rows.values()
        waiting = [r for r in rows if not r.decoding and (r.done < r.to_prefill or not r.started)]
        decoding = sum(r.decoding for r in rows)
        self._step_budget = self.budget.prefill_tokens(decoding, len(waiting))
        if not waiting:
            return
        step = plan(
            self._step_budget,
            # an unstarted prompt with nothing left to prefill still takes a row for a step
            [max(r.to_prefill - r.done, 1) for r in waiting],
            sum(r.started for r in waiting),
            self.chunk_cap,
            self.max_rows,
            pieces=self.pieces,
            throttled=self._step_budget < UNTHROTTLED_TOKENS,
        )
        # Rows that finished their prompt last step still hold a place in mlx-lm's prefill
        # batch when it counts free places (they move to decoding right after).
        finishing = sum(r.started and not r.decoding and r.done >= r.to_prefill for r in rows)
        gen.prefill_batch_size, gen.prefill_step_size = step.rows + finishing, step.chunk

    def after(self, progress, seconds: float) -> int:
        """Read one step's prompt progress reports; returns the prompt tokens it computed
        (padding included)."""
        decoding = sum(r.decoding for r in self._rows.values())
        chunks, joined = [], 0
        for p in progress:
            row = self._rows.get(p.uid)
            if row is None:
                continue
            if p.end_of_prompt:
                row.decoding = True
                joined += 1
                continue
            done = p.progress[0]
            chunks.append(done - row.done)
            row.done, row.started = done, True
        computed = len(chunks) * max(chunks, default=0)
        self.last = (decoding, computed, joined)
        self.budget.observe(seconds, decoding, computed, self._step_budget, joined)
        if seconds > SLOW_STEP_S and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "slow step %.0f ms: %d decoding, %d prompt tokens, %d joined, budget %d",
                seconds * 1e3,
                decoding,
                computed,
                joined,
                self._step_budget,
            )
        return computed
