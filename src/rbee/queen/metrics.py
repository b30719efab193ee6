"""The queen's metrics in the Prometheus text format (``GET /metrics``), without a client library.

Counters and histograms are updated in place on the hot path (a dict lookup and an add); gauges
that mirror state (queue depth, workers by state) are read from the queen when scraped.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable

__all__ = ["Counter", "Histogram", "Metrics"]

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclasses.dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = dataclasses.field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(key)} {_number(value)}"


@dataclasses.dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = dataclasses.field(init=False)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.n += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            cumulative += count
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}'
        yield f'{self.name}_bucket{{le="+Inf"}} {self.n}'
        yield f"{self.name}_sum {_number(self.total)}"
        yield f"{self.name}_count {self.n}"


def _gauge(name: str, help: str, values: dict[Labels, float]) -> Iterable[str]:
    yield f"# HELP {name} {help}"
    yield f"# TYPE {name} gauge"
    for key, value in sorted(values.items()):
        yield f"{name}{_labels(key)} {_number(value)}"


@dataclasses.dataclass
class Metrics:
    """Every metric the queen exports."""

    jobs: Counter = dataclasses.field(
        default_factory=lambda: Counter(
            "rbee_jobs_total", "Jobs that reached a final state, by state."
        )
    )
    tokens: Counter = dataclasses.field(
        default_factory=lambda: Counter("rbee_tokens_generated_total", "Tokens relayed to clients.")
    )
    decisions: Counter = dataclasses.field(
        default_factory=lambda: Counter(
            "rbee_scheduling_decisions_total", "Scheduling decisions, by kind and policy."
        )
    )
    attempts_failed: Counter = dataclasses.field(
        default_factory=lambda: Counter(
            "rbee_attempts_failed_total", "Job attempts given up on a worker (retried or not)."
        )
    )
    policy_errors: Counter = dataclasses.field(
        default_factory=lambda: Counter(
            "rbee_policy_errors_total", "Policy evaluations that failed and used the fallback."
        )
    )
    rejected: Counter = dataclasses.field(
        default_factory=lambda: Counter(
            "rbee_jobs_refused_total", "Jobs refused at admission, by reason."
        )
    )
    ttft: Histogram = dataclasses.field(
        default_factory=lambda: Histogram(
            "rbee_time_to_first_token_seconds", "From admission to the first relayed token."
        )
    )
    queue_wait: Histogram = dataclasses.field(
        default_factory=lambda: Histogram(
            "rbee_queue_wait_seconds", "From admission to the start of the first attempt."
        )
    )

    def render(self, gauges: Callable[[], dict[str, tuple[str, dict[Labels, float]]]]) -> str:
        """The exposition text: these counters and histograms plus ``gauges()`` read now."""
        lines: list[str] = []
        for metric in (
            self.jobs,
            self.tokens,
            self.decisions,
            self.attempts_failed,
            self.policy_errors,
            self.rejected,
            self.ttft,
            self.queue_wait,
        ):
            lines.extend(metric.render())
        for name, (help_, values) in gauges().items():
            lines.extend(_gauge(name, help_, values))
        return "\n".join(lines) + "\n"
