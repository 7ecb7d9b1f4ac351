"""What one generated token adds to a sequence: text deltas (stop strings held back and cut out),
log-probabilities when asked for, and the end of the sequence (eos, a stop string or length)."""

from __future__ import annotations

from typing import cast

import mlx.core as mx

from mlxd.engine.events import Delta, Finished, TokenLogprob
from mlxd.engine.job import Seq


def emit_token(seq: Seq, r) -> bool:
    """Emit what token ``r`` (a generation response: token, logprobs, finish_reason) adds to
    ``seq``'s text; True when the sequence has ended."""
    seq.produced += 1
    logprobs = token_logprobs(seq, r)
    if r.finish_reason == "stop":  # end of sequence: the eos token is not text
        piece, hit = seq.text.finish()
        return _end(seq, piece, logprobs, "stop", hit)
    piece, hit = seq.text.push(r.token)
    if hit:
        return _end(seq, piece, logprobs, "stop", hit)
    if r.finish_reason == "length":
        tail, hit = seq.text.finish()
        return _end(seq, piece + tail, logprobs, "stop" if hit else "length", hit)
    if piece or logprobs:
        seq.job.emit(Delta(seq.index, piece, logprobs))
    return False


def _end(seq: Seq, piece: str, logprobs, reason: str, stop: str | None = None) -> bool:
    """``stop``: the stop string that ended the sequence, if one did."""
    if piece or logprobs:
        seq.job.emit(Delta(seq.index, piece, logprobs))
    prompt = len(seq.job.prompt)
    seq.job.emit(Finished(seq.index, reason, prompt, seq.produced, seq.cached_tokens, stop))
    return True


def token_logprobs(seq: Seq, r) -> tuple[TokenLogprob, ...]:
    k = seq.job.params.logprobs
    if k is None:
        return ()
    lp = r.logprobs
    top: list[tuple[int, float]] = []
    if k > 0:
        ids = mx.argpartition(-lp, kth=k - 1)[:k]
        values = lp[ids]
        # mx's stub types tolist() as any nesting; 1-D arrays give flat lists
        order = cast(list[int], mx.argsort(-values).tolist())
        top_ids, top_values = cast(list[int], ids.tolist()), cast(list[float], values.tolist())
        top = [(top_ids[i], top_values[i]) for i in order]
    return (TokenLogprob(r.token, lp[r.token].item(), tuple(top)),)
