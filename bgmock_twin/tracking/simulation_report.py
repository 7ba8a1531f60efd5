"""The figures of a simulation's report: progress and latency percentiles, as typed
values the control API renders (the wire casing is ``api/``'s business).

Percentiles are nearest-rank, in seconds, rounded to the microsecond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Percentiles:
    """None when there is no value yet; ``max`` is kept only where it is asked for."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class Latency:
    total: Percentiles
    steps: dict[str, Percentiles]


@dataclass(frozen=True, slots=True)
class Progress:
    planned: int
    dispatched: int
    dropped: int
    not_yet_due: int
    recorded: int
    in_flight: int
    finished: int
    stuck_now: int


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values: Sequence[float], highest: float | None = None) -> Percentiles:
    """p50, p95 and p99 of ``values``; ``highest`` is reported as the max when given."""
    if not values:
        return Percentiles(0, None, None, None, highest)
    ordered = sorted(values)
    return Percentiles(
        count=len(ordered),
        p50=round(percentile(ordered, 50), 6),
        p95=round(percentile(ordered, 95), 6),
        p99=round(percentile(ordered, 99), 6),
        max=highest,
    )
