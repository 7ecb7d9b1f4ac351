"""Per-sequence samplers and logits processors, usable inside a running batch.

Each sampled sequence owns its random key, split once per token, so a seeded request draws the
same numbers whatever else shares its batch. Greedy sequences share one function object, which
lets mlx-lm's batch take a single argmax over all rows.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p, greedy_sampler

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: off; k >= 0: the chosen token plus the top k
    n: int = 1  # choices sharing one prompt (and one prefill)
    # Constrained decoding (response_format, forced tool calls): makes one fresh processor per
    # choice, since a constraint follows the tokens of its own sequence.
    constraint: Callable[[], LogitsProcessor] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_sampler(p: SamplingParams, index: int = 0) -> Sampler:
    """A sampler for choice ``index`` of a request; seeded choices get ``seed + index``."""
    if p.greedy:
        return greedy_sampler
    seed = p.seed + index if p.seed is not None else secrets.randbits(63)
    key = [mx.random.key(seed % 2**64)]
    inv_temp = 1.0 / p.temperature

    def sample(logprobs: mx.array) -> mx.array:
        if 0.0 < p.top_p < 1.0:
            logprobs = apply_top_p(logprobs, p.top_p)
        if p.min_p > 0.0:
            logprobs = apply_min_p(logprobs, p.min_p)
        if p.top_k > 0:
            logprobs = apply_top_k(logprobs, p.top_k)
        key[0], draw = mx.random.split(key[0])
        return mx.random.categorical(logprobs * inv_temp, key=draw)

    return sample


def make_processors(p: SamplingParams, prompt_tokens: int) -> list[LogitsProcessor]:
    """Penalties (OpenAI's, on the tokens generated so far), logit_bias, then the constraint,
    in that order: the constraint masks last, so no bias can bring back a token it forbids.

    mlx-lm hands each processor the whole token context (prompt, then generated); OpenAI's
    presence and frequency penalties count only what the model generated, so we slice.
    The engine calls this once per choice, so each gets its own constraint.
    """
    processors: list[LogitsProcessor] = []
    if p.presence_penalty or p.frequency_penalty:
        processors.append(_openai_penalties(p.presence_penalty, p.frequency_penalty, prompt_tokens))
    if p.repetition_penalty != 1.0:
        processors.append(_repetition_penalty(p.repetition_penalty, prompt_tokens))
    if p.logit_bias:
        ids = mx.array(list(p.logit_bias.keys()))
        bias = mx.array(list(p.logit_bias.values()), dtype=mx.float32)
        processors.append(lambda _tokens, logits: logits.at[:, ids].add(bias.astype(logits.dtype)))
    if p.constraint is not None:
        processors.append(p.constraint())
    return processors


def _openai_penalties(presence: float, frequency: float, prompt_tokens: int) -> LogitsProcessor:
    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens[prompt_tokens:]
        if generated.size == 0:
            return logits
        counts = mx.zeros((logits.shape[-1],), dtype=logits.dtype).at[generated].add(1)
        penalty = counts * frequency + (counts > 0).astype(logits.dtype) * presence
        return logits - penalty[None]

    return apply


def _repetition_penalty(penalty: float, prompt_tokens: int) -> LogitsProcessor:
    """The CTRL paper's penalty (as llama.cpp and mlx-lm apply it), over generated tokens."""

    def apply(tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens[prompt_tokens:]
        if generated.size == 0:
            return logits
        seen = (mx.zeros((logits.shape[-1],)).at[generated].add(1) > 0)[None]
        return mx.where(seen, mx.where(logits < 0, logits * penalty, logits / penalty), logits)

    return apply
