"""Open-model load profiles: when each payment of a run is *meant* to leave.

A profile is a rate over time, piecewise linear. The i-th payment (0-based) is due
at the moment the cumulative rate integral reaches i, so the first leaves at 0 and
the schedule never depends on how fast the system answered (no coordinated
omission). Pure functions; the sender turns offsets into monotonic deadlines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Segment:
    """A rate moving linearly from ``start_rate`` to ``end_rate`` over ``duration``
    seconds (``math.inf`` for the open-ended last segment)."""

    duration: float
    start_rate: float
    end_rate: float

    def __post_init__(self) -> None:
        if not self.duration > 0:
            raise ValueError("segment duration must be positive")
        if self.start_rate < 0 or self.end_rate < 0:
            raise ValueError("rates must not be negative")
        if math.isinf(self.duration) and self.start_rate != self.end_rate:
            raise ValueError("an open-ended segment has a constant rate")

    def count(self) -> float:
        """Payments due within the whole segment."""
        return (self.start_rate + self.end_rate) / 2 * self.duration

    def time_for(self, target: float) -> float:
        """Seconds into the segment at which ``target`` payments are due."""
        a = self.start_rate
        if target <= 0:
            return 0.0
        if self.start_rate == self.end_rate:
            return target / a
        k = (self.end_rate - self.start_rate) / self.duration
        # a*t + k*t^2/2 = target, written to stay stable when k is tiny or negative
        return 2 * target / (a + math.sqrt(max(0.0, a * a + 2 * k * target)))


def constant(rate: float) -> list[Segment]:
    _positive("rate", rate)
    return [Segment(math.inf, rate, rate)]


def fixed_delay(delay: float) -> list[Segment]:
    """The seed simulator's mode: one payment every ``delay`` seconds."""
    _positive("delay", delay)
    return constant(1 / delay)


def ramp(from_rate: float, to_rate: float, duration: float) -> list[Segment]:
    """From ``from_rate`` to ``to_rate`` linearly over ``duration``, then ``to_rate``."""
    _positive("to_rate", to_rate)
    if from_rate < 0:
        raise ValueError("from_rate must not be negative")
    _positive("duration", duration)
    return [Segment(duration, from_rate, to_rate), Segment(math.inf, to_rate, to_rate)]


def spike(base_rate: float, spike_rate: float, start: float, duration: float) -> list[Segment]:
    """``base_rate``, then ``spike_rate`` from ``start`` for ``duration``, then base again."""
    _positive("base_rate", base_rate)
    _positive("spike_rate", spike_rate)
    _positive("duration", duration)
    if start < 0:
        raise ValueError("start must not be negative")
    segments = [Segment(start, base_rate, base_rate)] if start > 0 else []
    return [*segments, Segment(duration, spike_rate, spike_rate),
            Segment(math.inf, base_rate, base_rate)]


def offsets(segments: Sequence[Segment], count: int) -> Iterator[float]:
    """Intended send offsets (seconds from the start) of ``count`` payments."""
    if count < 0:
        raise ValueError("count must not be negative")
    if not segments or not math.isinf(segments[-1].duration) or segments[-1].end_rate <= 0:
        raise ValueError("the last segment must be open-ended with a positive rate")
    seg_index = 0
    seg_start_time = 0.0
    seg_start_count = 0.0
    for i in range(count):
        segment = segments[seg_index]
        while not math.isinf(segment.duration) and i > seg_start_count + segment.count():
            seg_start_count += segment.count()
            seg_start_time += segment.duration
            seg_index += 1
            segment = segments[seg_index]
        yield seg_start_time + segment.time_for(i - seg_start_count)


def expected_duration(segments: Sequence[Segment], count: int) -> float:
    """When the last of ``count`` payments is due (0 for one payment)."""
    if count <= 1:
        return 0.0
    return max(offsets(segments, count))


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number")
