#!/usr/bin/env python3
"""Sum up engine step traces (``MLXD_STEP_TRACE``, mlxd/engine/steptrace.py) by kind of step.

    python bench/steptrace.py TRACE.jsonl [TRACE2.jsonl ...] [--min-decoding N]

For each trace (one server process; its first line names the command line): steps grouped as
``solo`` (the lone sequence), ``decode`` (only decoding), ``finish`` (sequences ended, nothing
joined or prefilled), ``join`` (prompts moved to decoding, no prefill chunk), ``prefill`` (a
prompt chunk computed), each split by how many streams decoded; count, median and mean
milliseconds, and the share of the traced time. Two servers on the same load (``--kv-bits 8``
against full precision) then say which kind of step the difference is in.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys

BUCKETS = (1, 8, 16, 32, 48, 64, 128, 256, 1 << 30)


def kind(step: dict) -> str:
    if step.get("solo"):
        return "solo"
    if step["p"]:
        return "prefill"
    if step["j"]:
        return "join"
    if step["f"]:
        return "finish"
    return "decode"


def bucket(decoding: int) -> str:
    low = 0
    for high in BUCKETS:
        if decoding <= high:
            return f"{low + 1}-{high}" if high < 1 << 30 else f">{low}"
        low = high
    raise AssertionError


def summarize(path: str, min_decoding: int = 0) -> str:
    header, steps = {}, []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "argv" in row:
                header = row
            elif row["d"] >= min_decoding:
                steps.append(row)
    groups: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for s in steps:
        groups[(kind(s), bucket(s["d"]))].append(s["s"])
    total = sum(s["s"] for s in steps) or 1.0
    out = [f"{path}: {' '.join(header.get('argv', []))}", f"  {len(steps)} steps, {total:.2f} s"]
    out.append(
        f"  {'kind':8} {'decoding':>9} {'steps':>6} {'p50 ms':>8} {'mean ms':>8} {'share':>6}"
    )
    for (k, b), times in sorted(groups.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
        out.append(
            f"  {k:8} {b:>9} {len(times):6d} {statistics.median(times) * 1e3:8.2f} "
            f"{statistics.fmean(times) * 1e3:8.2f} {sum(times) / total:6.1%}"
        )
    return "\n".join(out)


def _order(label: str) -> int:
    return int(label.lstrip(">").split("-")[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("traces", nargs="+")
    p.add_argument("--min-decoding", type=int, default=0)
    args = p.parse_args(argv)
    for path in args.traces:
        print(summarize(path, args.min_decoding))
    return 0


if __name__ == "__main__":
    sys.exit(main())
