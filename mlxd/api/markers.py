"""A stream of generated text -> runs of text per state, split at marker strings.

A chat reply may hold a thinking block (``<think>...</think>``) and tool-call blocks
(``<tool_call>...</tool_call>``) between ordinary text. ``MarkerMachine`` is the small state
machine that finds them while the text streams in: each state has the markers that leave it, the
markers themselves never appear in the runs, and a tail that could still grow into a marker is
held back (as ``textstream.StopScanner`` holds back stop strings). mlx-lm's
``generate.make_text_state_machine`` draws the same graph at the token level.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from mlxd.engine.textstream import partial_tail

NORMAL, REASONING, TOOL = "normal", "reasoning", "tool"


@dataclass(frozen=True)
class Run:
    """Text generated in ``state``."""

    state: str
    text: str


@dataclass(frozen=True)
class Switch:
    """The marker ``marker`` moved the stream from ``old`` to ``new``."""

    old: str
    new: str
    marker: str


Event = Run | Switch
Transitions = dict[str, tuple[tuple[str, str], ...]]  # state -> ((marker, next state), ...)


class MarkerMachine:
    def __init__(self, transitions: Transitions, state: str = NORMAL) -> None:
        # Empty markers (a format whose block runs to the end) never match.
        self.transitions = {
            s: tuple((m, n) for m, n in edges if m) for s, edges in transitions.items()
        }
        self.state = state
        self._held = ""
        self._switched = state

    def feed(self, text: str) -> Iterator[Event]:
        """The events ``text`` completes, lazily: a consumer may ``reject`` a switch as it
        comes, and the text after it is then read in the old state."""
        buf = self._held + text
        self._held = ""
        while True:
            edges = self.transitions.get(self.state, ())
            found = [(i, m, n) for m, n in edges if (i := buf.find(m)) >= 0]
            if not found:
                break
            # The earliest marker wins; of two at one place, the longer.
            i, marker, new = min(found, key=lambda f: (f[0], -len(f[1])))
            if i:
                yield Run(self.state, buf[:i])
            self._switched = self.state
            self.state, buf = new, buf[i + len(marker) :]
            yield Switch(self._switched, new, marker)
        keep = partial_tail(buf, [m for m, _ in self.transitions.get(self.state, ())])
        self._held = buf[len(buf) - keep :]
        if len(buf) > keep:
            yield Run(self.state, buf[: len(buf) - keep])

    def reject(self) -> None:
        """The switch just read was no switch (its marker is text of the old state)."""
        self.state = self._switched

    def finish(self) -> list[Event]:
        """The text held back for a marker that never completed."""
        held, self._held = self._held, ""
        return [Run(self.state, held)] if held else []
