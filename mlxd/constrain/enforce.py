"""Constrained decoding for one request: the logits processors that make a choice's text fit.

Two shapes, both built fresh per choice on the generation thread (``SamplingParams.constraint``):

- the whole reply: ``prefix``, JSON the grammar accepts, ``suffix``, then eos
  (``response_format``, and ``tool_choice`` "required" or a named function);
- strict tools under ``tool_choice: "auto"``: the text is free until the model opens a call block
  (its marker's tokens), then the call must be a JSON call of one of the tools, after which the
  text is free again (the model may write more calls, each one checked, or end).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import mlx.core as mx

from mlxd.constrain.index import Constraint

Processor = Callable[[mx.array, mx.array], mx.array]


@dataclass(frozen=True)
class Enforce:
    """``prefix``, then JSON the ``grammar`` accepts, then ``suffix``. With ``trigger`` (the token
    ids of a call block's opening marker) it applies from each place the model writes the
    trigger; without, to the whole reply, which then ends."""

    grammar: Any
    prefix: str = ""
    suffix: str = ""
    trigger: tuple[int, ...] = ()


@dataclass(frozen=True)
class ProcessorFactory:
    """``SamplingParams.constraint``: makes a fresh processor per choice (on the generation
    thread). What travels to the other ranks of a group is ``portable()``: the vocabulary is
    the tokenizer's, so each rank attaches its own."""

    enforce: Enforce
    eos_ids: tuple[int, ...]
    max_tokens: int
    vocab: Any = dataclasses.field(default=None, compare=False, repr=False)

    def __call__(self) -> Processor:
        return processor(self.enforce, self.vocab, self.eos_ids, self.max_tokens)

    def portable(self) -> ProcessorFactory:
        return dataclasses.replace(self, vocab=None)


def processor(enforce: Enforce, vocab, eos_ids, max_tokens: int) -> Processor:
    if enforce.trigger:
        return _Triggered(enforce, vocab, eos_ids, max_tokens)
    return Constraint(
        enforce.grammar, vocab, eos_ids, enforce.prefix, enforce.suffix, max_tokens
    ).processor()


class _Triggered:
    """Free text, with one constraint per call block the model opens."""

    def __init__(self, enforce: Enforce, vocab, eos_ids, max_tokens: int) -> None:
        self.enforce, self.vocab, self.eos_ids = enforce, vocab, eos_ids
        self.max_tokens = max_tokens
        self._origin: int | None = None  # context length at the first call: the prompt
        self._inner: Constraint | None = None
        self._inner_processor: Processor | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        n = tokens.size
        if self._origin is None:
            self._origin = n
            return logits
        if self._inner is None:
            k = len(self.enforce.trigger)
            tail = cast(list[int], tokens[n - k :].tolist())  # 1-D: token ids
            if n - self._origin < k or tuple(tail) != self.enforce.trigger:
                return logits
            self._inner = Constraint(
                self.enforce.grammar,
                self.vocab,
                self.eos_ids,
                self.enforce.prefix,
                self.enforce.suffix,
                self.max_tokens - (n - self._origin),
            )
            self._inner_processor = self._inner.processor()
        assert self._inner_processor is not None  # made with self._inner
        masked = self._inner_processor(tokens, logits)
        if self._inner.done and not self._inner.ended and self._inner.error is None:
            # The block is complete (its suffix written): free text again.
            self._inner = self._inner_processor = None
            return logits
        return masked
