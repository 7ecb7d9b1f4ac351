"""What the ranks of a group tell each other once per step, over MLX's own collectives.

Rank 0 decides what changes between two steps (``Decision``: jobs that arrived, jobs cancelled,
stop); every rank reports how it is doing (``Report``: its memory and a digest of what it
generated). Both travel in one ``all_sum`` of a fixed-size uint8 buffer: rank 0 writes the
decision's bytes into the decision slot and each rank writes its report into its own slot,
everyone else leaves zeros there, so the sum hands every rank every slot unchanged. A decision
longer than the slot (a burst of long prompts) sends the rest in a second ``all_sum`` of its
exact length. No transport of ours: the group's backend carries it, on the same stream as the
model's collectives.

Decisions are pickled: every rank runs this same program, started together by the launcher, and
they are the only ones on the group's links.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.generate import generation_stream

from mlxd.engine.sampling import SamplingParams

# Decision bytes carried by the per-step collective itself: an empty decision (most steps) or a
# chat prompt of about a thousand tokens fits; a longer one costs a second collective.
SLOT_BYTES = 4096
_LENGTH = struct.Struct("<I")
_REPORT = struct.Struct("<QQQ")  # active bytes, peak bytes, digest of emitted text
RECORD_BYTES = 1024  # one rank's start-up record (JSON) in ``exchange``


@dataclass(frozen=True)
class Arrival:
    """A job rank 0 took in: ``key`` names it in later decisions. Sampled requests carry a
    concrete seed, so every rank draws the same tokens."""

    key: int
    prompt: tuple[int, ...]
    params: SamplingParams


@dataclass(frozen=True)
class Decision:
    arrivals: tuple[Arrival, ...] = ()
    cancel: tuple[int, ...] = ()  # keys: cancelled by the client, or waited past queue_timeout
    stop: bool = False  # the server shuts down: every rank leaves its loop

    def encode(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL) if self != EMPTY else b""

    @staticmethod
    def decode(data: bytes) -> Decision:
        if not data:
            return EMPTY
        decision = pickle.loads(data)
        if not isinstance(decision, Decision):
            raise TypeError(f"expected a Decision, got {type(decision).__name__}")
        return decision


EMPTY = Decision()


@dataclass(frozen=True)
class Report:
    active_bytes: int = 0
    peak_bytes: int = 0
    digest: int = 0  # CRC-32 of the text this rank emitted since its last report


@dataclass
class Pending:
    """A posted exchange, until ``Channel.read`` collects it."""

    summed: Any  # mx.array, being evaluated
    rest: bytes  # rank 0: decision bytes past the slot


class Channel:
    """The per-step exchange over ``handle`` (an ``mx.distributed.Group``)."""

    def __init__(self, handle: Any, rank: int, size: int) -> None:
        self.handle, self.rank, self.size = handle, rank, size
        self.width = _LENGTH.size + SLOT_BYTES + size * _REPORT.size

    def post(self, decision: Decision | None, report: Report) -> Pending:
        """Start the exchange (rank 0 passes its decision, the others None) without waiting."""
        buf = np.zeros(self.width, dtype=np.uint8)
        rest = b""
        if decision is not None:
            data = decision.encode()
            head, rest = data[:SLOT_BYTES], data[SLOT_BYTES:]
            buf[: _LENGTH.size] = np.frombuffer(_LENGTH.pack(len(data)), np.uint8)
            buf[_LENGTH.size : _LENGTH.size + len(head)] = np.frombuffer(head, np.uint8)
        at = _LENGTH.size + SLOT_BYTES + self.rank * _REPORT.size
        packed = _REPORT.pack(report.active_bytes, report.peak_bytes, report.digest & 0xFFFFFFFF)
        buf[at : at + _REPORT.size] = np.frombuffer(packed, np.uint8)
        summed = _all_sum(buf, self.handle)
        mx.async_eval(summed)
        return Pending(summed, rest)

    def read(self, pending: Pending) -> tuple[Decision, list[Report]]:
        """Wait for a posted exchange: rank 0's decision and every rank's report."""
        data = np.asarray(pending.summed).tobytes()
        (length,) = _LENGTH.unpack_from(data)
        payload = data[_LENGTH.size : _LENGTH.size + min(length, SLOT_BYTES)]
        if length > SLOT_BYTES:
            payload += self._rest(pending.rest, length - SLOT_BYTES)
        base = _LENGTH.size + SLOT_BYTES
        reports = [
            Report(*_REPORT.unpack_from(data, base + r * _REPORT.size)) for r in range(self.size)
        ]
        return Decision.decode(payload), reports

    def _rest(self, rest: bytes, length: int) -> bytes:
        buf = np.zeros(length, dtype=np.uint8)
        if self.rank == 0:
            buf[:] = np.frombuffer(rest, np.uint8)
        summed = _all_sum(buf, self.handle)
        return np.asarray(summed).tobytes()


def _all_sum(buf: np.ndarray, handle: Any) -> mx.array:
    """On the stream the model's own collectives run on: a backend pairs the collectives of the
    ranks in the order each rank issues them, which two streams would not keep."""
    return mx.distributed.all_sum(mx.array(buf), group=handle, stream=generation_stream)


def exchange(handle: Any, rank: int, size: int, record: bytes) -> list[bytes]:
    """Every rank's ``record`` (at most RECORD_BYTES), in rank order; a blocking collective."""
    if len(record) > RECORD_BYTES:
        raise ValueError(f"a rank record is {len(record)} bytes, more than {RECORD_BYTES}")
    buf = np.zeros(size * RECORD_BYTES, dtype=np.uint8)
    buf[rank * RECORD_BYTES : rank * RECORD_BYTES + len(record)] = np.frombuffer(record, np.uint8)
    data = np.asarray(_all_sum(buf, handle)).tobytes()
    return [data[r * RECORD_BYTES : (r + 1) * RECORD_BYTES].rstrip(b"\0") for r in range(size)]
