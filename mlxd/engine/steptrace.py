"""A trace of the engine's steps for profiling: ``MLXD_STEP_TRACE=PATH`` (``{pid}`` in PATH is
replaced by the process id) writes one JSON line per step of the generation thread: how long
``BatchGenerator.next()`` (or the lone sequence's step) took, how many streams decoded, the prompt
tokens it computed, how many prompts joined the decoding batch and how many sequences finished.
``bench/steptrace.py`` sums a trace up by kind of step. Off (no cost) unless the variable is set.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time
from typing import IO

ENV = "MLXD_STEP_TRACE"


class StepTrace:
    def __init__(self, path: str) -> None:
        # Line-buffered: a benchmark may kill the server without a goodbye.
        self._file: IO[str] = open(path.replace("{pid}", str(os.getpid())), "a", buffering=1)  # noqa: SIM115
        self._write({"argv": sys.argv, "started": time.time()})
        atexit.register(self.close)

    def record(
        self,
        seconds: float,
        decoding: int,
        prompt_tokens: int,
        joined: int,
        finished: int,
        solo: bool = False,
    ) -> None:
        line = {
            "s": round(seconds, 6),
            "d": decoding,
            "p": prompt_tokens,
            "j": joined,
            "f": finished,
        }
        if solo:
            line["solo"] = 1
        self._write(line)

    def _write(self, line: dict) -> None:
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def from_env() -> StepTrace | None:
    path = os.environ.get(ENV)
    return StepTrace(path) if path else None
