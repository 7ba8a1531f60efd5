"""Consumer-group lag of BGMock's groups and the twin's own, and a judgement of each.

Every lag interval, for each group: its committed offsets, the high watermark of
each partition it committed, and their difference summed per topic
(``bgmock_kafka_consumer_lag{group,topic}``). A committed offset above the high
watermark is an odd broker answer (some brokers count record batches, not
records): the partition's lag is clamped to 0 and the reading counted as an
anomaly. Beyond raw offsets (``lag_window``): how old the oldest unconsumed event
is (``bgmock_kafka_consumer_lag_seconds``) and a Burrow-style status per group,
judged over a sliding window of readings (``bgmock_kafka_consumer_group_status``),
so alerts can say "stalled" rather than "big". A configured group without any
committed offset (a wrong name, or a group that never ran) is reported as
MISSING (``bgmock_kafka_consumer_group_missing`` and one log line), never as an
empty, reassuring series. ``bgmock_kafka_consumer_last_progress_timestamp_seconds``
is the last time the group's offsets moved or it had no lag.

The sources (``lag_sources``): the in-process bus's offsets, or Kafka.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgmock_twin import metrics
from bgmock_twin.books.lag_sources import (
    KafkaLagSource,
    LagSource,
    MemoryLagSource,
    TopicPartition,
    lag_source_for,
)
from bgmock_twin.books.lag_window import (
    LagStatus,
    Mark,
    Reading,
    advance,
    lag_seconds,
    partition_status,
    remember,
    worst,
)
from bgmock_twin.logs import get_logger

__all__ = ["GroupLag", "GroupState", "KafkaLagSource", "LagMonitor", "LagSource", "LagStatus",
           "MemoryLagSource", "compute_lag", "lag_source_for"]

log = get_logger(__name__)

WINDOW_SAMPLES = 10
# Watermark changes remembered per partition for lag in seconds (about four hours of
# readings at the default interval under steady traffic); beyond, "at least".
MARKS_KEPT = 1000


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    lag: dict[str, int]  # by topic, summed over partitions, never negative
    anomalies: dict[str, int]  # partitions per topic whose committed offset exceeded the end
    committed_total: int


def compute_lag(group: str, committed: Mapping[TopicPartition, int],
                highs: Mapping[TopicPartition, int]) -> GroupLag:
    """Lag per topic from committed offsets and high watermarks (pure)."""
    lag: dict[str, int] = {}
    anomalies: dict[str, int] = {}
    for (topic, partition), offset in committed.items():
        high = highs.get((topic, partition))
        if high is None or offset < 0:
            continue
        difference = high - offset
        if difference < 0:
            anomalies[topic] = anomalies.get(topic, 0) + 1
            difference = 0
        lag[topic] = lag.get(topic, 0) + difference
    return GroupLag(group, lag, anomalies, sum(o for o in committed.values() if o >= 0))


@dataclass(frozen=True, slots=True)
class GroupState:
    """What is known of one watched group for the status answer."""

    lag: dict[str, int] | None  # by topic; None until read
    last_progress: float | None  # unix time its offsets last moved (or it had no lag)
    error: str | None  # why the last read failed
    committed_offsets: bool  # False: the group never committed (or does not exist)
    status: LagStatus = LagStatus.UNKNOWN
    lag_seconds: dict[str, float] | None = None  # by topic: age of the oldest unconsumed event


@dataclass(slots=True)
class _Progress:
    committed_total: int
    at: float  # unix time of the last progress


@dataclass(slots=True)
class LagMonitor:
    """Collects lag for a fixed set of groups, judges and exports it."""

    source: LagSource
    groups: Sequence[str]
    window_samples: int = WINDOW_SAMPLES
    _progress: dict[str, _Progress] = field(default_factory=dict)
    _latest: dict[str, GroupLag] = field(default_factory=dict)
    _errors: dict[str, str] = field(default_factory=dict)
    _exported: set[tuple[str, str]] = field(default_factory=set)
    _empty: dict[str, int] = field(default_factory=dict)  # group -> runs found missing
    _windows: dict[str, dict[TopicPartition, tuple[Reading, ...]]] = field(default_factory=dict)
    _marks: dict[TopicPartition, tuple[Mark, ...]] = field(default_factory=dict)
    _status: dict[str, LagStatus] = field(default_factory=dict)
    _seconds: dict[str, dict[str, float]] = field(default_factory=dict)

    def run(self) -> dict[str, GroupLag]:
        """One collection; a group that cannot be read keeps no stale figures."""
        committed, highs = self._read()
        now, clock = time.time(), time.monotonic()
        for tp, high in highs.items():
            self._marks[tp] = remember(self._marks.get(tp, ()), clock, high, MARKS_KEPT)
        results: dict[str, GroupLag] = {}
        seen: set[tuple[str, str]] = set()
        for group in self.groups:
            if group in self._errors:
                self._judged(group, LagStatus.ERR)
                continue
            offsets = committed.get(group, {})
            results[group] = result = compute_lag(group, offsets, highs)
            if not offsets:
                self._missing(group)
                continue
            if self._empty.pop(group, 0) >= self.window_samples:
                log.info("consumer_group_found", group=group)
            metrics.KAFKA_CONSUMER_GROUP_MISSING.labels(group).set(0)
            for topic, value in result.lag.items():
                metrics.KAFKA_CONSUMER_LAG.labels(group, topic).set(value)
                seen.add((group, topic))
            for topic, count in result.anomalies.items():
                metrics.KAFKA_CONSUMER_LAG_ANOMALIES.labels(group, topic).inc(count)
            self._judge(group, offsets, highs, clock)
            previous = self._progress.get(group)
            if previous is None or previous.committed_total != result.committed_total \
                    or sum(result.lag.values()) == 0:
                self._progress[group] = _Progress(result.committed_total, now)
            metrics.KAFKA_CONSUMER_LAST_PROGRESS.labels(group).set(self._progress[group].at)
        for group, topic in self._exported - seen:
            with contextlib.suppress(KeyError):
                metrics.KAFKA_CONSUMER_LAG.remove(group, topic)
            with contextlib.suppress(KeyError):
                metrics.KAFKA_CONSUMER_LAG_SECONDS.remove(group, topic)
        self._exported = seen
        self._latest = results
        return results

    def _read(self) -> tuple[dict[str, dict[TopicPartition, int]],
                             dict[TopicPartition, int]]:
        """Every group's committed offsets and the ends of their partitions; a failure
        is noted per group in ``_errors`` (one broker failure ends the run's reads)."""
        committed: dict[str, dict[TopicPartition, int]] = {}
        failure: str | None = None
        for group in self.groups:
            if failure is not None:  # the broker failed this run: do not wait on it again
                self._errors[group] = failure
                continue
            try:
                committed[group] = self.source.committed(group)
                self._errors.pop(group, None)
            except Exception as exc:
                if self._errors.get(group) is None:
                    log.warning("consumer_lag_unavailable", group=group, error=str(exc)[:200])
                failure = str(exc)[:200] or type(exc).__name__
                self._errors[group] = failure
        wanted = sorted({tp for offsets in committed.values() for tp in offsets})
        try:
            highs = self.source.high_watermarks(wanted) if wanted else {}
        except Exception as exc:
            log.warning("watermarks_unavailable", error=str(exc)[:200])
            for group in committed:
                self._errors[group] = f"watermarks: {str(exc)[:180]}"
            return {}, {}
        return committed, highs

    def _missing(self, group: str) -> None:
        """No committed offset at all: a wrong name or a group that never ran. Exported
        as MISSING at once (no lag, no progress: a stall alert must not be silenced by
        "no data = fine"); logged once, when it has been missing for a whole window (a
        service that is just starting has not committed yet)."""
        runs = self._empty[group] = self._empty.get(group, 0) + 1
        if runs == self.window_samples:
            log.warning("consumer_group_missing", group=group, runs=runs,
                        hint="no committed offsets on the broker: check TWIN_LAG_GROUPS "
                             "against the services' group ids")
        metrics.KAFKA_CONSUMER_GROUP_MISSING.labels(group).set(1)
        self._windows.pop(group, None)
        self._progress.pop(group, None)
        with contextlib.suppress(KeyError):
            metrics.KAFKA_CONSUMER_LAST_PROGRESS.remove(group)
        self._judged(group, LagStatus.MISSING)

    def _judge(self, group: str, offsets: Mapping[TopicPartition, int],
               highs: Mapping[TopicPartition, int], clock: float) -> None:
        """Advance the group's windows, then its status and lag in seconds."""
        windows = self._windows.setdefault(group, {})
        seconds: dict[str, float] = {}
        for tp, offset in offsets.items():
            high = highs.get(tp)
            if high is None or offset < 0:
                continue
            windows[tp] = advance(windows.get(tp, ()), Reading(clock, offset, high),
                                  self.window_samples)
            age = lag_seconds(self._marks.get(tp, ()), offset, clock)
            seconds[tp[0]] = max(seconds.get(tp[0], 0.0), age)
        for tp in set(windows) - set(offsets):
            del windows[tp]
        for topic, age in seconds.items():
            metrics.KAFKA_CONSUMER_LAG_SECONDS.labels(group, topic).set(round(age, 3))
        self._seconds[group] = seconds
        self._judged(group, worst(partition_status(w, self.window_samples)
                                  for w in windows.values()))

    def _judged(self, group: str, status: LagStatus) -> None:
        if status in (LagStatus.ERR, LagStatus.MISSING):
            self._windows.pop(group, None)  # a gap in the readings: judge afresh
            self._seconds.pop(group, None)
        previous = self._status.get(group)
        if previous is not None and previous is not status and status is not LagStatus.ERR:
            log.info("consumer_group_status", group=group, status=status.value,
                     previous=previous.value)
        self._status[group] = status
        for value in LagStatus:
            metrics.KAFKA_CONSUMER_GROUP_STATUS.labels(group, value.value).set(
                1 if value is status else 0)

    def states(self) -> dict[str, GroupState]:
        return {
            group: GroupState(
                lag=dict(self._latest[group].lag) if group in self._latest else None,
                last_progress=self._progress[group].at if group in self._progress else None,
                error=self._errors.get(group),
                committed_offsets=group not in self._empty,
                status=self._status.get(group, LagStatus.UNKNOWN),
                lag_seconds=dict(self._seconds[group]) if group in self._seconds else None,
            )
            for group in self.groups
        }

    def status(self) -> dict[str, Any]:
        """``states`` as plain data (tests and logs)."""
        return {"groups": {group: {"lag": state.lag, "last_progress": state.last_progress,
                                   "error": state.error,
                                   "committed_offsets": state.committed_offsets,
                                   "status": state.status.value,
                                   "lag_seconds": state.lag_seconds}
                           for group, state in self.states().items()}}

    def close(self) -> None:
        self.source.close()
