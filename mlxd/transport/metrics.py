"""Counters, histograms and the Prometheus text exposition (format 0.0.4), stdlib only.

Everything here is touched from the event loop thread alone (the engine's own counters are read,
not written), so no locks.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds; local generation runs from milliseconds (TTFT on a GPU) to minutes (long CPU answers).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RECENT_REQUESTS = 100  # tokens/s statistics cover the last this many generations


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.total += value
        self.n += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [
            f'{name}_bucket{{le="{_num(b)}"}} {c}'
            for b, c in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out.append(f"{name}_sum {_num(self.total)}")
        out.append(f"{name}_count {self.n}")
        return out


def _num(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.duration = Histogram(DURATION_BUCKETS)
        self.recent_tps: collections.deque[float] = collections.deque(maxlen=RECENT_REQUESTS)

    def observe_request(
        self, method: str, route: str, status: int, seconds: float, error_type: str | None
    ) -> None:
        self.requests[(method, route, status)] += 1
        self.duration.observe(seconds)
        if error_type:
            self.errors[error_type] += 1

    def observe_generation(
        self,
        prompt: int,
        completion: int,
        cached: int,
        ttft: float | None,
        decode_seconds: float | None,
    ) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cached_tokens += cached
        if ttft is not None:
            self.ttft.observe(ttft)
        if decode_seconds and completion > 1:
            self.recent_tps.append((completion - 1) / decode_seconds)

    def stats(self) -> dict:
        tps = list(self.recent_tps)
        return {
            "requests_total": sum(self.requests.values()),
            "prompt_tokens_total": self.prompt_tokens,
            "completion_tokens_total": self.completion_tokens,
            "cached_prompt_tokens_total": self.cached_tokens,
            "tokens_per_second": {
                "recent_average": sum(tps) / len(tps) if tps else None,
                "min": min(tps) if tps else None,
                "max": max(tps) if tps else None,
                "window": len(tps),
            },
            "errors": dict(self.errors),
        }

    def exposition(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The Prometheus text format; ``gauges`` maps name -> (help, value), read at scrape."""
        out = [
            "# HELP mlxd_requests_total HTTP requests answered, by route and status.",
            "# TYPE mlxd_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            out.append(
                f'mlxd_requests_total{{method="{_escape(method)}",'
                f'route="{_escape(route)}",status="{status}"}} {count}'
            )
        out += [
            "# HELP mlxd_errors_total Error responses, by OpenAI error type.",
            "# TYPE mlxd_errors_total counter",
        ]
        out += [
            f'mlxd_errors_total{{type="{_escape(kind)}"}} {count}'
            for kind, count in sorted(self.errors.items())
        ]
        for name, help_text, value in (
            ("mlxd_prompt_tokens_total", "Prompt tokens processed.", self.prompt_tokens),
            (
                "mlxd_completion_tokens_total",
                "Completion tokens generated.",
                self.completion_tokens,
            ),
            (
                "mlxd_cached_prompt_tokens_total",
                "Prompt tokens served from the prompt cache.",
                self.cached_tokens,
            ),
        ):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        out += [
            "# HELP mlxd_time_to_first_token_seconds Time from request to first token.",
            "# TYPE mlxd_time_to_first_token_seconds histogram",
        ]
        out += self.ttft.lines("mlxd_time_to_first_token_seconds")
        out += [
            "# HELP mlxd_request_duration_seconds Time from request to last byte.",
            "# TYPE mlxd_request_duration_seconds histogram",
        ]
        out += self.duration.lines("mlxd_request_duration_seconds")
        for name, (help_text, level) in gauges.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_num(level)}"]
        return "\n".join(out) + "\n"


# ----- several expositions in one (the front end of --models and its workers) -----


def with_label(sample: str, name: str, value: str) -> str:
    """A sample line with one more label, first: ``m{a="1"} 2`` -> ``m{model="x",a="1"} 2``."""
    label = f'{name}="{_escape(value)}"'
    brace, space = sample.find("{"), sample.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        labels = sample[brace + 1 :]
        return f"{sample[:brace]}{{{label}{'' if labels.startswith('}') else ','}{labels}"
    return f"{sample[:space]}{{{label}}}{sample[space:]}"


def merge(parts: list[tuple[str | None, str]], label: str = "model") -> str:
    """Expositions as one: each family (HELP, TYPE, samples) once, holding every part's samples;
    a part's samples get ``label="<its name>"`` unless its name is None (the front end's own)."""
    families: dict[str, tuple[list[str], list[str]]] = {}
    for owner, text in parts:
        family: tuple[list[str], list[str]] | None = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                family = families.setdefault(name, ([], []))
                if not any(h.split(" ", 3)[1] == line.split(" ", 3)[1] for h in family[0]):
                    family[0].append(line)
            elif line and not line.startswith("#") and family is not None:
                family[1].append(line if owner is None else with_label(line, label, owner))
    out = [line for head, samples in families.values() for line in head + samples]
    return "\n".join(out) + "\n"
