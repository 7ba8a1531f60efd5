"""Open-model load profiles: when each payment of a run is *meant* to leave.

A profile is a rate over time: piecewise linear (constant, ramp, spike: a list of
``Segment``) or the seed's periodic ``Wave``. The i-th payment (0-based) is due at
the moment the cumulative rate integral reaches i, so the first leaves at 0 and the
schedule never depends on how fast the system answered (no coordinated omission).
A run given a duration sends the payments due strictly before it
(``count_for_duration``: the integral, rounded up). Every integral is in closed
form; only the wave's inverse is found numerically (bisection on its closed-form
integral). Pure functions; the sender turns offsets into monotonic deadlines.
"""

from __future__ import annotations

import math
from collections import deque
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


TWO_PI = 2 * math.pi
_BISECTIONS = 64  # halvings of one period: far below a microsecond for any period allowed


@dataclass(frozen=True, slots=True)
class Wave:
    """rate(t) = max(0, base + amplitude * sin(2*pi*t / period)): a periodic rise and
    fall around ``base``; an amplitude above the base rests at zero for part of each
    period (the rate is never negative)."""

    base: float
    amplitude: float
    period: float

    def __post_init__(self) -> None:
        _positive("base_rate", self.base)
        _positive("period_seconds", self.period)
        if not (self.amplitude >= 0 and math.isfinite(self.amplitude)):
            raise ValueError("amplitude must not be negative")

    def rate(self, t: float) -> float:
        return max(0.0, self.base + self.amplitude * math.sin(TWO_PI * t / self.period))

    def _phase_integral(self, theta: float) -> float:
        """The integral of max(0, base + amplitude*sin(u)) du over [0, theta], for
        theta within one period [0, 2*pi]."""
        b, a = self.base, self.amplitude
        if a <= b:
            return b * theta + a * (1 - math.cos(theta))
        alpha = math.asin(b / a)  # the rate is zero on (pi + alpha, 2*pi - alpha)
        rest_from, rest_to = math.pi + alpha, TWO_PI - alpha
        rising = b * min(theta, rest_from) + a * (1 - math.cos(min(theta, rest_from)))
        if theta <= rest_to:
            return rising
        return rising + b * (theta - rest_to) + a * (math.cos(rest_to) - math.cos(theta))

    def per_period(self) -> float:
        """Payments due in one whole period."""
        return self._phase_integral(TWO_PI) * self.period / TWO_PI

    def integral(self, t: float) -> float:
        """Payments due within the first ``t`` seconds."""
        if t <= 0:
            return 0.0
        periods, rest = divmod(t, self.period)
        return periods * self.per_period() + \
            self._phase_integral(TWO_PI * rest / self.period) * self.period / TWO_PI

    def time_for(self, target: float) -> float:
        """The first moment at which ``target`` payments are due."""
        if target <= 0:
            return 0.0
        per_period = self.per_period()
        periods = math.floor(target / per_period)
        goal = (target - periods * per_period) * TWO_PI / self.period
        lo, hi = 0.0, TWO_PI
        for _ in range(_BISECTIONS):
            mid = (lo + hi) / 2
            if self._phase_integral(mid) < goal:
                lo = mid
            else:
                hi = mid
        return periods * self.period + hi * self.period / TWO_PI


def wave(base_rate: float, amplitude: float, period: float) -> Wave:
    return Wave(base_rate, amplitude, period)


Profile = Sequence[Segment] | Wave


def offsets(profile: Profile, count: int) -> Iterator[float]:
    """Intended send offsets (seconds from the start) of ``count`` payments."""
    if count < 0:
        raise ValueError("count must not be negative")
    if isinstance(profile, Wave):
        return (profile.time_for(i) for i in range(count))
    return _segment_offsets(profile, count)


def _segment_offsets(segments: Sequence[Segment], count: int) -> Iterator[float]:
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


def expected_duration(profile: Profile, count: int) -> float:
    """When the last of ``count`` payments is due (0 for one payment)."""
    if count <= 1:
        return 0.0
    if isinstance(profile, Wave):
        return profile.time_for(count - 1)
    return max(offsets(profile, count))


def due_within(profile: Profile, seconds: float) -> float:
    """The integral of the rate over the first ``seconds``: payments due by then."""
    if isinstance(profile, Wave):
        return profile.integral(seconds)
    total, left = 0.0, seconds
    for segment in profile:
        span = min(left, segment.duration)
        if span <= 0:
            break
        end = segment.start_rate if math.isinf(segment.duration) else \
            segment.start_rate + (segment.end_rate - segment.start_rate) * span / segment.duration
        total += (segment.start_rate + end) / 2 * span
        left -= span
    return total


def count_for_duration(profile: Profile, seconds: float) -> int:
    """Payments due strictly before ``seconds`` (payment *i* is due when the integral
    reaches *i*): at 20/s over 30 s, payments 0..599, so 600. At least one."""
    _positive("duration", seconds)
    return max(1, math.ceil(due_within(profile, seconds) - 1e-9))


def window_for(profile: Profile, count: int) -> float:
    """The time ``count`` payments cover: when payment ``count`` (the one after the
    last) would be due. ``count`` payments over it is exactly the profile's mean rate,
    which is what an achieved rate is compared with."""
    if isinstance(profile, Wave):
        return profile.time_for(count)
    last = deque(offsets(profile, count + 1), maxlen=1)
    return last[0] if last else 0.0


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number")
