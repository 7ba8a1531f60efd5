"""The figures of a simulation's report: progress and latency percentiles, as typed
values the control API renders (the wire casing is ``api/``'s business).

Statistics are computed on demand from the simulation's recorded durations in the
ledger (at most the API's bound of 100,000 per simulation per step), nothing is kept
in memory between requests: exact, not sampled. Percentiles are nearest-rank, in
seconds, rounded to the microsecond.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Percentiles:
    """None when there is no value yet."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None = None
    min: float | None = None
    mean: float | None = None
    p90: float | None = None


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
    """min, mean, p50, p90, p95, p99 and max of ``values``; ``highest`` is reported as
    the max when given (the send lag's max is measured over more than is kept)."""
    if not values:
        return Percentiles(0, None, None, None, highest)
    ordered = sorted(values)
    return Percentiles(
        count=len(ordered),
        p50=round(percentile(ordered, 50), 6),
        p95=round(percentile(ordered, 95), 6),
        p99=round(percentile(ordered, 99), 6),
        max=round(ordered[-1], 6) if highest is None else highest,
        min=round(ordered[0], 6),
        mean=round(math.fsum(ordered) / len(ordered), 6),
        p90=round(percentile(ordered, 90), 6),
    )


@dataclass(frozen=True, slots=True)
class Results:
    """The threshold-ready figures of a run (the client's names in snake_case):
    ratios over the payments dispatched, ``None`` while nothing was dispatched."""

    achieved_rate: float | None  # payments dispatched per second of sending
    sending_seconds: float | None
    dispatched: int
    dropped: int
    success: int
    failed: int
    rejected: int
    stuck: int
    unfinished: int
    success_ratio: float | None
    error_ratio: float | None
    drop_ratio: float | None


def results(planned: int, dispatched: int, dropped: int, outcomes: dict[str, int],
            unfinished: int, sending_seconds: float | None,
            dispatched_in_run: int | None = None) -> Results:
    """The figures from the counts (pure). ``dispatched_in_run``: what the current
    run sent in ``sending_seconds`` (a resumed run's, without the first life's)."""
    errors = outcomes.get("failed", 0) + outcomes.get("rejected", 0) + outcomes.get("stuck", 0)
    sent = dispatched if dispatched_in_run is None else dispatched_in_run
    rate = sent / sending_seconds if sending_seconds and sending_seconds > 0 else None
    return Results(
        achieved_rate=None if rate is None else round(rate, 3),
        sending_seconds=None if sending_seconds is None else round(sending_seconds, 3),
        dispatched=dispatched, dropped=dropped,
        success=outcomes.get("success", 0), failed=outcomes.get("failed", 0),
        rejected=outcomes.get("rejected", 0), stuck=outcomes.get("stuck", 0),
        unfinished=unfinished,
        success_ratio=round(outcomes.get("success", 0) / dispatched, 6) if dispatched else None,
        error_ratio=round(errors / dispatched, 6) if dispatched else None,
        drop_ratio=round(dropped / planned, 6) if planned else None,
    )
