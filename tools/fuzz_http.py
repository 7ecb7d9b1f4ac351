"""A mutation fuzzer for mlxd.http's RequestParser, seeded from the corpus in test_http.py.

Each input is a corpus entry put through a few random mutations (bit flips, byte sets, inserted
tokens or bytes, deletions, splices with other entries, repeated segments, truncation), then
parsed twice: fed whole, and fed in random pieces. A finding is any of:
- an exception other than HttpError, or an HttpError without close=True;
- a verdict that depends on how the bytes were split (requests or error status differ);
- more bytes held than the limits allow, while the parser waits for more;
- a dead parser that does not re-raise its error, or one input taking over MAX_CASE_SECONDS.

    python tools/fuzz_http.py --count 1000000 --seed 7

prints the count, the time taken and the findings, and exits 1 if there are any. test_http.py
runs it for a few seconds with a fixed seed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":  # standalone: import mlxd from this checkout, and test_http's corpus
    _ROOT = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_ROOT), str(_ROOT / "tests"), str(_ROOT / "tests" / "transport")]

from mlxd.transport.errors import HttpError  # noqa: E402
from mlxd.transport.h1 import (  # noqa: E402
    MAX_CHUNK_LINE_BYTES,
    MAX_HEAD_BYTES,
    MAX_TRAILER_BYTES,
    Request,
    RequestParser,
)

FUZZ_MAX_BODY_BYTES = 1024  # small, so mutations reach the 413 paths
MAX_HELD_BYTES = MAX_HEAD_BYTES + FUZZ_MAX_BODY_BYTES + MAX_CHUNK_LINE_BYTES + 2 + MAX_TRAILER_BYTES
MAX_INPUT_BYTES = 64 * 1024  # repeated segments stop growing here
MAX_CASE_SECONDS = 1.0  # one input parsed twice in milliseconds; a second means a hang
BYTE_AT_A_TIME_BELOW = 512  # inputs shorter than this are sometimes fed a byte at a time

TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b"=",
    b"\x00",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"\x16\x03\x01",
    b"0",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b"ffffffff",
    b"Host: x\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"HTTP/2.0",
    b"GET / HTTP/1.1\r\n",
    b"POST / HTTP/1.1\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"%",
    b"%2",
    b"?",
    b"*",
    b"#",
    b"http://",
    b"[::1]",
    b" \r\n",
    b"\r\n ",
    b"999999999999999999999",
]


def _flip_bit(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def _set_byte(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + rng.choice(TOKENS)[:1] + data[i + 1 :]


def _insert_token(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    i = rng.randint(0, len(data))
    return data[:i] + rng.choice(TOKENS) + data[i:]


def _insert_random(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    i = rng.randint(0, len(data))
    return data[:i] + rng.randbytes(rng.randint(1, 8)) + data[i:]


def _delete_range(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    return data[:i] + data[i + rng.randint(1, 16) :]


def _splice(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    other = rng.choice(seeds)
    return data[: rng.randint(0, len(data))] + other[rng.randint(0, len(other)) :]


def _append_other(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    return data + rng.choice(seeds)  # pipelining


def _repeat_segment(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 32))
    return data[:i] + data[i:j] * rng.choice((2, 3, 10, 100, 1000)) + data[j:]


def _truncate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    return data[: rng.randint(0, len(data))]


MUTATORS = (
    _flip_bit,
    _set_byte,
    _insert_token,
    _insert_token,
    _insert_random,
    _delete_range,
    _splice,
    _append_other,
    _repeat_segment,
    _truncate,
)


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = rng.choice(seeds)
    for _ in range(rng.randint(1, 4)):
        data = rng.choice(MUTATORS)(rng, data, seeds)[:MAX_INPUT_BYTES]
    return data


class Finding(Exception):
    pass


def _drain(parser: RequestParser, verdicts: list) -> None:
    """Take every request the parser can give now, then check what it holds."""
    while True:
        try:
            request = parser.maybe_next_request()
        except HttpError as error:
            if not error.close:
                raise Finding(f"HttpError {error.status} without close=True") from error
            verdicts.append(("error", error.status))
            _check_dead(parser, error)
            raise
        if request is None:
            if parser.buffered > MAX_HELD_BYTES:
                raise Finding(f"holds {parser.buffered} bytes while waiting")
            return
        if not isinstance(request, Request):
            raise Finding(f"returned {type(request).__name__}")
        verdicts.append(("request", request.head, request.body))


def _check_dead(parser: RequestParser, error: HttpError) -> None:
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        parser.maybe_next_request()
    except HttpError as again:
        if again is error:
            return
    raise Finding("a dead parser did not re-raise its error")


def parse(data: bytes, cuts: list[int]) -> list:
    """The requests and error (as comparable tuples) from feeding ``data`` cut at ``cuts``."""
    parser, verdicts = RequestParser(FUZZ_MAX_BODY_BYTES), []
    try:
        for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
            parser.feed(data[start:end])
            _drain(parser, verdicts)
        parser.feed_eof()
        _drain(parser, verdicts)
        if parser.buffered:
            raise Finding("bytes held after EOF")
    except HttpError:
        pass
    return verdicts


def _cuts(rng: random.Random, data: bytes) -> list[int]:
    if len(data) < 2:
        return []
    if len(data) < BYTE_AT_A_TIME_BELOW and rng.random() < 0.25:
        return list(range(1, len(data)))
    return sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 16))))


def check_one(rng: random.Random, data: bytes) -> None:
    """Raise Finding if ``data`` shows a fault in the parser."""
    cuts, started = _cuts(rng, data), time.perf_counter()
    try:
        whole, pieces = parse(data, []), parse(data, cuts)
    except Finding:
        raise
    except Exception as error:  # anything but HttpError escaping the parser is a bug
        raise Finding("".join(traceback.format_exception_only(error)).strip()) from error
    if whole != pieces:
        raise Finding(f"verdict depends on the split: {whole[-1:]} vs {pieces[-1:]}")
    if time.perf_counter() - started > MAX_CASE_SECONDS:
        raise Finding(f"took {time.perf_counter() - started:.1f} s")


@dataclass
class Report:
    count: int = 0
    elapsed: float = 0.0
    findings: list[tuple[bytes, str]] = field(default_factory=list)


def fuzz(
    seeds: list[bytes],
    *,
    seed: int,
    count: int | None = None,
    seconds: float | None = None,
    max_findings: int = 10,
) -> Report:
    """Run until ``count`` inputs or ``seconds`` pass (whichever first), or findings pile up."""
    rng, report = random.Random(seed), Report()
    started = time.perf_counter()
    while (count is None or report.count < count) and len(report.findings) < max_findings:
        if seconds is not None and time.perf_counter() - started > seconds:
            break
        data = mutate(rng, seeds)
        try:
            check_one(rng, data)
        except Finding as finding:
            report.findings.append((data, str(finding)))
        report.count += 1
    report.elapsed = time.perf_counter() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args(argv)
    from test_http import CORPUS  # the seeds; imported late so pytest never imports us twice

    report = fuzz(
        [case.raw for case in CORPUS], seed=args.seed, count=args.count, seconds=args.seconds
    )
    print(f"count={report.count} elapsed={report.elapsed:.1f}s findings={len(report.findings)}")
    for data, message in report.findings:
        print(f"FINDING: {message}\n  input ({len(data)} bytes): {data[:300]!r}")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
