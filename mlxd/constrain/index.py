"""Constrained decoding: a per-sequence logits processor that keeps output inside a grammar.

``Constraint(grammar, vocab, eos_ids, prefix, suffix, max_tokens)`` follows one sequence: the
processor it hands mlx-lm advances the grammar state with the token sampled last, then sets the
logits of every token that cannot continue the text to -inf. The text is ``prefix``, one JSON
value per the grammar, ``suffix``; eos is allowed once (and only once) all three are complete.

Masks are memoized per parse state (``GrammarIndex``, shared by every sequence of a grammar):
inside a string the state repeats token after token, so most steps cost a dict lookup. A new
state costs a walk of the vocabulary's sorted pieces for structural positions (few bytes allowed,
whole ranges pruned), or, for a state inside a string or number, the vocabulary's precomputed
leaf table plus a walk of the few tokens that leave the leaf part-way.

Termination (``max_tokens``): every state knows the bytes of its shortest completion, and every
byte has a single-byte token, so a state costing c bytes can always finish within c tokens. When
the tokens left get close to that, the mask keeps only tokens after which the completion still
fits (eos stays allowed at a complete state). Output is thus complete within ``max_tokens``
whenever ``max_tokens >= grammar.state_cost(grammar.initial)`` (prefix + shortest value +
suffix, in bytes); below that the mask keeps the tokens that shorten the completion most, best
effort. Without ``max_tokens`` nothing bounds strings or arrays.

The processor assumes each call's context grows by the tokens sampled since the last call, as in
``generate_step`` and ``BatchGenerator``; it cannot rewind (no speculative decoding).
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import mlx.core as mx
import numpy as np

from mlxd.constrain.grammar import FRAME_BITS, STATE_MASK, Grammar, State
from mlxd.constrain.vocab import PieceIndex, TokenVocabulary

__all__ = [
    "Constraint",
    "GrammarIndex",
    "TokenVocabulary",
]

log = logging.getLogger(__name__)

STATE_CACHE = 256  # masks kept per grammar: ~100 KB each at a 49k vocabulary
STACK_CACHE = 4096  # per-stack token groups (small: leaf tables are shared, not copied)
GRAMMARS_PER_VOCAB = 32  # GrammarIndex objects kept per vocabulary
PROBE_RATIO = 4  # probe allowed bytes with bisect when they are this much fewer


class _Entry:
    """What one parse state allows: a mask, and the allowed tokens grouped by the cost (bytes)
    of the shortest completion after each, for the max_tokens squeeze."""

    __slots__ = ("mask", "groups", "max_cost", "accepting", "_mx")

    def __init__(self, mask: np.ndarray, groups: list, accepting: bool) -> None:
        self.mask, self.groups, self.accepting = mask, groups, accepting
        self.max_cost = max((c for c, _ in groups), default=0)
        self._mx: dict[int, mx.array] = {}

    def mx_mask(self, width: int) -> mx.array:
        m = self._mx.get(width)
        if m is None:
            m = self._mx[width] = mx.array(_fit(self.mask, width))
        return m


def _fit(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask at the logits' width (models often pad their vocabulary)."""
    if len(mask) >= width:
        return mask[:width]
    return np.concatenate([mask, np.zeros(width - len(mask), dtype=bool)])


class GrammarIndex:
    """Masks for one grammar over one vocabulary. Generation thread only."""

    def __init__(self, grammar: Grammar, vocab: TokenVocabulary, eos_ids: frozenset) -> None:
        self.grammar, self.vocab = grammar, vocab
        self.eos = np.array(sorted(eos_ids), dtype=np.int64)
        self.eos_ids = frozenset(eos_ids)
        self.width = max([vocab.size, *(i + 1 for i in eos_ids)])
        self._entries: OrderedDict[State, _Entry] = OrderedDict()
        self._stacks: OrderedDict = OrderedDict()
        self._advance: dict = {}

    @classmethod
    def get(cls, grammar: Grammar, vocab: TokenVocabulary, eos_ids) -> GrammarIndex:
        key = (grammar, frozenset(eos_ids))
        cache = vocab.grammar_indexes
        index = cache.get(key)
        if index is None:
            index = cache[key] = cls(grammar, vocab, key[1])
            if len(cache) > GRAMMARS_PER_VOCAB:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return index

    def advance(self, state: State, token: int) -> State:
        key = (state, token)
        nxt = self._advance.get(key)
        if nxt is None:
            piece = self.vocab.pieces[token] if 0 <= token < self.vocab.size else None
            nxt = self.grammar.walk(piece, state) if piece else frozenset()
            if len(self._advance) > 100_000:
                self._advance.clear()
            self._advance[key] = nxt
        return nxt

    def mask(self, state: State, remaining: int | None, width: int) -> mx.array:
        entry = self.entry(state)
        if remaining is None or remaining - 1 >= entry.max_cost:
            return entry.mx_mask(width)
        # Squeeze: keep tokens after which the shortest completion fits in what is left; when
        # nothing fits (max_tokens below the shortest output), those that leave the least.
        limit = max(remaining - 1, min((c for c, _ in entry.groups), default=0))
        mask = np.zeros(self.width, dtype=bool)
        for cost, ids in entry.groups:
            if cost <= limit:
                mask[ids] = True
        mask[self.eos] = entry.accepting
        return mx.array(_fit(mask, width))

    def eos_mask(self, width: int) -> mx.array:
        mask = np.zeros(self.width, dtype=bool)
        mask[self.eos] = True
        return mx.array(_fit(mask, width))

    def entry(self, state: State) -> _Entry:
        entry = self._entries.get(state)
        if entry is not None:
            self._entries.move_to_end(state)
            return entry
        mask = np.zeros(self.width, dtype=bool)
        groups: list = []
        for stack in state:
            base, extra = self._stack_groups(stack)
            if base is not None:
                mask[: len(base)] |= base
            for _, ids in extra:
                mask[ids] = True
            groups += extra
        accepting = self.grammar.accepting(state)
        mask[self.eos] = accepting  # also when an eos id spells text (not a special token)
        entry = self._entries[state] = _Entry(mask, groups, accepting)
        if len(self._entries) > STATE_CACHE:
            self._entries.popitem(last=False)
        return entry

    def _stack_groups(self, stack: tuple):
        """(a shared base mask or None, [(cost after, token ids)]) for one settled stack."""
        hit = self._stacks.get(stack)
        if hit is not None:
            return hit
        g = self.grammar
        top = stack[-1]
        machine = g.machines[top >> FRAME_BITS]
        if machine.leaf is None:
            base, groups = None, self._walk(self.vocab.index, frozenset([stack]))
        else:
            table = self.vocab.leaf_table(machine, top & STATE_MASK)
            rest = g.rest_cost(stack)
            dist = g.dist[top >> FRAME_BITS]
            base = table.inside_mask
            groups = [(dist[end] + rest, ids) for end, ids in table.inside]
            if table.exits is not None and len(stack) > 1:
                groups += self._walk(table.exits, g.closure(stack[:-1]))
        hit = self._stacks[stack] = (base, groups)
        if len(self._stacks) > STACK_CACHE:
            self._stacks.popitem(last=False)
        return hit

    def _walk(self, index: PieceIndex, state: State) -> list:
        found: dict[int, list[int]] = {}
        if len(index):
            self._descend(index, 0, len(index), 0, state, found)
        return [(cost, np.array(ids, dtype=np.int64)) for cost, ids in found.items()]

    def _descend(
        self, index: PieceIndex, lo: int, hi: int, depth: int, state: State, found: dict
    ) -> None:
        """Visit the pieces in keys[lo:hi] (sharing their first ``depth`` bytes) that ``state``
        allows, recording each piece that ends inside the range under its completion cost."""
        keys, g = index.keys, self.grammar
        if len(keys[lo]) == depth:  # the prefix itself: the caller recorded it
            lo += 1
        if lo >= hi:
            return
        prefix = keys[lo][:depth]
        allowed = g.next_bytes(state)
        probe = len(allowed) * PROBE_RATIO < hi - lo
        for b, i, j in (self._probe if probe else self._scan)(keys, lo, hi, depth, prefix, allowed):
            nxt = g.step(state, b)
            if not nxt:
                continue
            if len(keys[i]) == depth + 1:
                found.setdefault(g.state_cost(nxt), []).extend(index.ids[i])
            if j - i > (len(keys[i]) == depth + 1):
                self._descend(index, i, j, depth + 1, nxt, found)

    @staticmethod
    def _probe(keys, lo, hi, depth, prefix, allowed):
        for b in sorted(allowed):
            i = bisect_left(keys, prefix + bytes((b,)), lo, hi)
            if i < hi and keys[i][depth] == b:
                yield b, i, _range_end(keys, prefix, b, i, hi)

    @staticmethod
    def _scan(keys, lo, hi, depth, prefix, allowed):
        i = lo
        while i < hi:
            b = keys[i][depth]
            j = _range_end(keys, prefix, b, i, hi)
            if b in allowed:
                yield b, i, j
            i = j


def _range_end(keys, prefix: bytes, b: int, i: int, hi: int) -> int:
    return bisect_left(keys, prefix + bytes((b + 1,)), i, hi) if b < 255 else hi


class Constraint:
    """One sequence's constraint. Not thread-safe: the generation thread alone uses it.

    Use ``processor()`` as an mlx-lm logits processor, or drive it by hand with ``advance`` and
    ``mask``. The processor sees token t only when asked for the logits after it, so after the
    last step ``done`` lags one token; call ``advance`` with the final token to catch up.
    """

    def __init__(
        self,
        grammar: Grammar,
        vocab: TokenVocabulary,
        eos_ids,
        prefix: str = "",
        suffix: str = "",
        max_tokens: int | None = None,
    ) -> None:
        if not eos_ids:
            raise ValueError("a constraint needs at least one eos token id")
        self.grammar = grammar.with_affixes(prefix.encode(), suffix.encode())
        self.max_tokens = max_tokens
        self._index = GrammarIndex.get(self.grammar, vocab, eos_ids)
        # Per-sequence state
        self._state = self.grammar.initial
        self._tokens = 0  # tokens advanced over (eos included)
        self._origin: int | None = None  # context length at the processor's first call
        self.ended = False  # eos taken at a complete state
        self.error: str | None = None  # a token the grammar refused arrived; only eos since

    @property
    def done(self) -> bool:
        """The text so far is complete: prefix, a valid value, suffix."""
        return self.ended or (self.error is None and self.grammar.accepting(self._state))

    def advance(self, token: int) -> None:
        self._tokens += 1
        if self.ended or self.error is not None:
            return
        if token in self._index.eos_ids:
            if self.grammar.accepting(self._state):
                self.ended = True
            else:
                self._fail(f"eos ({token}) before the text was complete")
            return
        nxt = self._index.advance(self._state, token)
        if nxt:
            self._state = nxt
        else:
            self._fail(f"token {token} does not fit the grammar here")

    def _fail(self, why: str) -> None:
        # Only possible if something after the mask re-enabled a token; end the sequence.
        self.error = why
        log.warning("constraint broken: %s", why)

    def mask(self, width: int | None = None) -> mx.array:
        """Boolean mask over the vocabulary (``width`` entries) of the tokens allowed next."""
        width = width or self._index.width
        if self.ended or self.error is not None:
            return self._index.eos_mask(width)
        remaining = None if self.max_tokens is None else self.max_tokens - self._tokens
        return self._index.mask(self._state, remaining, width)

    def processor(self) -> Callable[[mx.array, mx.array], mx.array]:
        """An mlx-lm logits processor: ``(context tokens, logits (1, V)) -> logits``. The first
        call's context is the prompt; each later call's has the tokens sampled since at its end."""

        def constrain(tokens: mx.array, logits: mx.array) -> mx.array:
            n = tokens.size
            if self._origin is None:
                self._origin = n - self._tokens
            new = n - self._origin - self._tokens
            if new > 0:
                for token in cast(list[int], tokens[n - new :].tolist()):  # 1-D: ids
                    self.advance(token)
            return mx.where(self.mask(logits.shape[-1]), logits, -math.inf)

        return constrain
