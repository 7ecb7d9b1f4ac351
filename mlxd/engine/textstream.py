"""Token ids -> text deltas, with stop strings cut out even when they span tokens.

The engine pushes each generated token here; what comes back is text that is safe to send: the
streaming detokenizer holds back incomplete UTF-8, and ``StopScanner`` holds back any tail that
could still grow into a stop string, so the stop text itself never reaches the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the import pulls in transformers; the type is all we need here
    from mlx_lm.tokenizer_utils import StreamingDetokenizer


class StopScanner:
    """Finds the earliest stop string in a stream of text pieces."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop string hit or None). After a hit, stop feeding.
        The API needs to know which one: Anthropic's reply names it (``stop_sequence``)."""
        buf = self._held + text
        hits = [(i, s) for s in self._stops if (i := buf.find(s)) >= 0]
        if hits:
            self._held = ""
            at, stop = min(hits, key=lambda h: h[0])
            return buf[:at], stop
        keep = partial_tail(buf, self._stops)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], None

    def flush(self) -> str:
        """Text held back for a stop string that never completed."""
        held, self._held = self._held, ""
        return held


def partial_tail(buf: str, markers: tuple[str, ...] | list[str]) -> int:
    """Length of the longest tail of ``buf`` that is a proper prefix of some marker: what must
    be held back because it may still grow into one (stop strings here, tool/think markers in
    ``mlxd/api/markers.py``)."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(buf)), best, -1):
            if marker.startswith(buf[-n:]):
                best = n
                break
    return best


@dataclass
class TextStream:
    """Detokenizes one sequence incrementally and applies its stop strings."""

    detokenizer: StreamingDetokenizer  # one per sequence
    scanner: StopScanner

    def push(self, token: int) -> tuple[str, str | None]:
        self.detokenizer.add_token(token)
        return self.scanner.feed(self.detokenizer.last_segment)

    def finish(self) -> tuple[str, str | None]:
        """Flush the detokenizer and the scanner at the end of a sequence (eos or length)."""
        self.detokenizer.finalize()
        text, hit = self.scanner.feed(self.detokenizer.last_segment)
        return (text, hit) if hit else (text + self.scanner.flush(), None)
