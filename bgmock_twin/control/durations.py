"""Durations as people write them (``30s``, ``2m``, ``1h30m``, ``500ms``, ``90``) and
the number of payments a load profile produces over one.

The control API takes a ``count``, not a duration (yet): ``--duration`` is turned
into the count the profile is due to send within it. The profile arithmetic mirrors
the twin's open-model pacing (payment *i*, from 0, is due when the integral of the
rate reaches *i*), written here again so the client needs nothing of the daemon.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``30s``, ``2m``, ``1h30m``, ``1.5s``, ``500ms`` or a bare
    number of seconds. Raises ``ValueError`` for anything else, zero included."""
    value = text.strip().lower()
    if _NUMBER.fullmatch(value):
        seconds = float(value)
    elif _WHOLE.fullmatch(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    else:
        raise ValueError(f"not a duration: {text!r} (write 30s, 2m, 1h30m, 500ms or seconds)")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"a duration must be more than zero: {text!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Segment:
    """A rate moving linearly from ``start`` to ``end`` payments/s over ``seconds``."""

    seconds: float
    start: float
    end: float


def profile_segments(
    profile: str, *, rate: float | None = None,
    ramp_from: float | None = None, ramp_to: float | None = None,
    ramp_seconds: float | None = None, spike_rate: float | None = None,
    spike_start: float | None = None, spike_seconds: float | None = None,
) -> list[Segment]:
    """The profile as segments, the last one open-ended (``math.inf`` seconds)."""
    if profile == "ramp":
        if ramp_from is None or ramp_to is None or ramp_seconds is None:
            raise ValueError("--profile ramp needs --ramp-from, --ramp-to and --ramp-duration")
        return [Segment(ramp_seconds, ramp_from, ramp_to), Segment(math.inf, ramp_to, ramp_to)]
    if rate is None:
        raise ValueError(f"--profile {profile} needs --rate or --delay")
    if profile == "spike":
        if spike_rate is None or spike_start is None or spike_seconds is None:
            raise ValueError(
                "--profile spike needs --spike-rate, --spike-start and --spike-duration")
        head = [Segment(spike_start, rate, rate)] if spike_start > 0 else []
        return [*head, Segment(spike_seconds, spike_rate, spike_rate),
                Segment(math.inf, rate, rate)]
    if profile != "constant":
        raise ValueError(f"unknown profile {profile!r}")
    return [Segment(math.inf, rate, rate)]


def due_within(segments: list[Segment], seconds: float) -> float:
    """The integral of the rate over the first ``seconds``."""
    total, left = 0.0, seconds
    for segment in segments:
        span = min(left, segment.seconds)
        if span <= 0:
            break
        # the rate at the end of the span, interpolated within the segment
        end = segment.start if math.isinf(segment.seconds) else \
            segment.start + (segment.end - segment.start) * span / segment.seconds
        total += (segment.start + end) / 2 * span
        left -= span
    return total


def count_for_duration(segments: list[Segment], seconds: float) -> int:
    """Payments due strictly before ``seconds`` (payment *i* is due when the integral
    reaches *i*): at 20/s over 30 s, payments 0..599, so 600. At least one."""
    due = due_within(segments, seconds)
    return max(1, math.ceil(due - 1e-9))
