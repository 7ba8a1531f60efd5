"""Judging a consumer group over a sliding window of readings, Burrow-style, and
how old its oldest unconsumed event is. Pure functions on recorded series.

Burrow (linkedin/Burrow, "Consumer Lag Evaluation Rules") judges each partition on
its last N commits. The twin reads committed offsets and high watermarks every lag
interval instead of following ``__consumer_offsets``, so its window holds the last
``TWIN_LAG_WINDOW_SAMPLES`` *readings* of a partition, and the rules become:

- OK: the lag was zero at some reading of the window (Burrow's first rule), or the
  consumer moved and the lag did not grow across the whole window;
- UNKNOWN: lag on every reading but the window is not full yet: too early to judge;
- STOP: the committed offset and the lag did not change over a full window, with
  lag: the consumer stopped with a backlog and nothing new arrives either;
- STALL: the committed offset did not move over a full window while the lag was
  above zero and changed (events keep arriving): the consumer is stuck;
- WARN: the offset moves but the lag never fell between two readings and ended
  higher than it began: the consumer is too slow and falls behind.

A group is as bad as its worst partition. MISSING (the group has no committed
offsets: it does not exist or never committed) and ERR (the read failed) are
decided by the monitor. An offset or an end that goes backwards (the group was
reset, the broker lost its data, the group restarted from ``latest`` on a new
topic) starts a new window: readings from before say nothing about the new epoch.

Lag in seconds is interpolated from the history of each partition's high
watermark (as Lightbend's kafka-lag-exporter does): the record at the committed
offset arrived when the end passed it, between the last reading that still saw
the end below it and the first that saw it beyond. No record is fetched: that
would add a fetch per lagging partition per interval on a broker that is already
behind, and on brokers whose watermarks count batches (Tansu) it would read the
wrong record. Unlike "time since the offset last moved", it also ages a consumer
that moves but slowly. Precision: one lag interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import pairwise


class LagStatus(StrEnum):
    OK = "OK"
    UNKNOWN = "UNKNOWN"
    WARN = "WARN"
    STALL = "STALL"
    STOP = "STOP"
    MISSING = "MISSING"
    ERR = "ERR"


# Worst wins when partitions are combined into the group's status.
_RANK = {LagStatus.OK: 0, LagStatus.UNKNOWN: 1, LagStatus.WARN: 2, LagStatus.STALL: 3,
         LagStatus.STOP: 4, LagStatus.MISSING: 5, LagStatus.ERR: 6}


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of a partition: when (monotonic seconds), its committed offset and end."""

    at: float
    offset: int
    high: int

    @property
    def lag(self) -> int:
        return max(0, self.high - self.offset)


def advance(window: Sequence[Reading], reading: Reading, size: int) -> tuple[Reading, ...]:
    """The window after one more reading: the last ``size`` of its epoch."""
    if window and (reading.offset < window[-1].offset or reading.high < window[-1].high):
        return (reading,)  # rewound: a new epoch
    return (*window, reading)[-size:]


def _same(values: Iterable[int]) -> bool:
    return len(set(values)) <= 1


def partition_status(window: Sequence[Reading], size: int) -> LagStatus:
    """Burrow's rules on one partition's window (oldest reading first)."""
    if not window:
        return LagStatus.UNKNOWN
    if any(r.lag == 0 for r in window):
        return LagStatus.OK
    if len(window) < size:
        return LagStatus.UNKNOWN
    if _same(r.offset for r in window):
        return LagStatus.STOP if _same(r.lag for r in window) else LagStatus.STALL
    lags = [r.lag for r in window]
    if all(b >= a for a, b in pairwise(lags)) and lags[-1] > lags[0]:
        return LagStatus.WARN
    return LagStatus.OK


def worst(statuses: Iterable[LagStatus]) -> LagStatus:
    """The group's status from its partitions' (UNKNOWN when there are none)."""
    return max(statuses, key=_RANK.__getitem__, default=LagStatus.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Mark:
    """The end of a partition was ``high`` from ``first`` to ``last`` (monotonic seconds)."""

    high: int
    first: float
    last: float


def remember(marks: Sequence[Mark], at: float, high: int, keep: int) -> tuple[Mark, ...]:
    """The watermark history after one more reading (the last ``keep`` changes)."""
    if marks and high == marks[-1].high:
        return (*marks[:-1], replace(marks[-1], last=at))
    if marks and high < marks[-1].high:
        return (Mark(high, at, at),)  # the end went backwards: forget the old history
    return (*marks, Mark(high, at, at))[-keep:]


def lag_seconds(marks: Sequence[Mark], committed: int, now: float) -> float:
    """How long ago the record at ``committed`` (the oldest unconsumed) arrived; 0
    without lag. Older than the history: at least since its oldest mark."""
    if not marks or committed >= marks[-1].high:
        return 0.0
    previous: Mark | None = None
    for mark in marks:
        if mark.high > committed:
            if previous is None:
                return max(0.0, now - mark.first)
            # the end went from previous.high to mark.high between previous.last and
            # mark.first; the record at `committed` arrived when it passed committed + 1
            fraction = (committed + 1 - previous.high) / (mark.high - previous.high)
            arrived = previous.last + fraction * (mark.first - previous.last)
            return max(0.0, now - arrived)
        previous = mark
    return 0.0
