"""Shared prefixes: a request whose prompt begins like one already running starts from that
sequence's KV cache instead of computing the shared part again.

mlx-lm's ``LRUPromptCache`` only holds sequences that have finished, so N requests that arrive
together with one long system prompt would each prefill it: the prompt cache is empty until the
first of them ends. Here the running sequences are a prompt cache too:

- a running sequence that has finished its prompt hands a copy of its cache at once;
- one still prefilling becomes the *leader*: the request waits (parked, its KV memory reserved)
  until the leader's first token, then copies the shared part and prefills only its own tail,
  beside the other followers' tails, in the same batched prefill.

The ``n`` choices of one request are the same thing with the whole prompt shared.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from mlx_lm.models.cache import trim_prompt_cache

from mlxd.engine.job import Job

# Shorter shared beginnings (a chat template's opening, a short system prompt) are not worth a
# wait or a copy: prefilling them costs about as little.
MIN_SHARED_TOKENS = 64


@dataclass(frozen=True)
class Follower:
    """A choice that starts once its leader's prompt is in the KV cache."""

    job: Job
    index: int  # which of the job's n choices
    need: int  # KV bytes it reserves (already counted against the budget)


class Followers:
    """Choices waiting for their leader's first token (generation thread only)."""

    def __init__(self) -> None:
        self._by_leader: dict[int, list[Follower]] = {}

    def __contains__(self, leader: int) -> bool:
        return leader in self._by_leader

    def add(self, leader: int, job: Job, need: int, first: int = 0) -> None:
        """Choices ``first``..n-1 of ``job`` follow ``leader``."""
        self._by_leader.setdefault(leader, []).extend(
            Follower(job, i, need) for i in range(first, job.params.n)
        )

    def pop(self, leader: int) -> list[Follower]:
        return self._by_leader.pop(leader, [])

    def waiting(self) -> list[Follower]:
        return [f for fs in self._by_leader.values() for f in fs]

    def drop(self, gone: list[int]) -> list[Follower]:
        """Forget cancelled followers; those whose leader is in ``gone`` (cancelled before its
        first token) are handed back, the first choice of each job, to start on their own."""
        orphans = [f for u in gone for f in self._by_leader.pop(u, []) if f.index == 0]
        for leader, followers in self._by_leader.items():
            self._by_leader[leader] = [f for f in followers if not f.job.cancelled]
        return [f for f in orphans if not f.job.cancelled]

    def clear(self) -> None:
        self._by_leader.clear()


@dataclass(frozen=True)
class Source:
    """Where a new prompt's shared prefix can come from."""

    uid: int  # the running sequence
    shared: int  # prompt tokens it has in common with the new prompt
    ready: bool  # its prompt is in the cache: copy now (else: follow it)


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common beginning of two token lists (slice comparisons run in C)."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    while low < high:  # a[:low] == b[:low] holds; a[:high + 1] != b[:high + 1] after the first
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def find_source(
    prompt: list[int], cached: int, running: dict[int, tuple[list[int], bool]]
) -> Source | None:
    """The running sequence (uid -> its prompt, whether its prompt is in the cache) whose prompt
    shares the most with ``prompt``, if that beats the ``cached`` tokens the prompt cache gives
    by MIN_SHARED_TOKENS and is worth waiting for: a leader still prefilling is followed only
    when its own remaining prompt beyond the shared part is no longer than what is saved."""
    probe = prompt[:MIN_SHARED_TOKENS]
    best: Source | None = None
    for uid, (theirs, ready) in running.items():
        if theirs[:MIN_SHARED_TOKENS] != probe:
            continue  # the cheap test rules out almost everyone
        shared = min(common_prefix(prompt, theirs), len(prompt) - 1)
        if shared - cached < MIN_SHARED_TOKENS:
            continue
        if not ready and len(theirs) - shared > shared:
            continue
        if best is None or shared > best.shared or (shared == best.shared and ready):
            best = Source(uid, shared, ready)
    return best


def cut_for(cache, tokens: list[int], prompt: list[int]):
    """A copy of a running sequence's ``cache`` (holding ``tokens``) cut to what it shares with
    ``prompt``, and that length (the prompt's last token is always left to compute: its logits
    give the first new token)."""
    shared = min(common_prefix(tokens, prompt), len(prompt) - 1)
    mine = copy.deepcopy(cache)
    trim_prompt_cache(mine, len(tokens) - shared)
    return mine, shared
