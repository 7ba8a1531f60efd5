"""Consumer-group lag of BGMock's groups and the twin's own.

Every lag interval, for each group: its committed offsets, the high watermark of
each partition it committed, and their difference summed per topic
(``bgmock_kafka_consumer_lag{group,topic}``). A committed offset above the high
watermark is an odd broker answer (some brokers count record batches, not
records): the partition's lag is clamped to 0 and the reading counted as an
anomaly. ``bgmock_kafka_consumer_last_progress_timestamp_seconds{group}`` is the
last time the group's committed offsets moved or it had no lag, so alerts can say
"stalled" rather than "big".

Two sources: the in-process bus's own offsets, and Kafka through consumers that
never subscribe (committed offsets, watermarks), every call with a timeout so a
slow broker costs one run, never a hung job.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bgmock_twin import metrics
from bgmock_twin.contract import TOPICS
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

TopicPartition = tuple[str, int]


class LagSource(Protocol):
    def committed(self, group: str) -> dict[TopicPartition, int]:
        """The group's committed offsets (only partitions with a commit)."""

    def high_watermarks(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """The next offset of each partition (missing when it could not be read)."""

    def close(self) -> None: ...


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


@dataclass(slots=True)
class _Progress:
    committed_total: int
    at: float  # unix time of the last progress


@dataclass(slots=True)
class LagMonitor:
    """Collects lag for a fixed set of groups and exports it."""

    source: LagSource
    groups: Sequence[str]
    _progress: dict[str, _Progress] = field(default_factory=dict)
    _latest: dict[str, GroupLag] = field(default_factory=dict)
    _errors: dict[str, str] = field(default_factory=dict)
    _exported: set[tuple[str, str]] = field(default_factory=set)
    _empty: set[str] = field(default_factory=set)

    def run(self) -> dict[str, GroupLag]:
        """One collection; a group that cannot be read keeps no stale figures."""
        results: dict[str, GroupLag] = {}
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
            highs = {}
            for group in committed:
                self._errors[group] = f"watermarks: {str(exc)[:180]}"
            committed = {}
        now = time.time()
        seen: set[tuple[str, str]] = set()
        for group, offsets in committed.items():
            result = compute_lag(group, offsets, highs)
            results[group] = result
            if not offsets:
                # never committed (or a wrong group name): no lag and no progress to
                # export - a stall alert must not be silenced by "no data = fine"
                if group not in self._empty:
                    log.info("consumer_group_without_offsets", group=group)
                    self._empty.add(group)
                continue
            self._empty.discard(group)
            for topic, value in result.lag.items():
                metrics.KAFKA_CONSUMER_LAG.labels(group, topic).set(value)
                seen.add((group, topic))
            for topic, count in result.anomalies.items():
                metrics.KAFKA_CONSUMER_LAG_ANOMALIES.labels(group, topic).inc(count)
            previous = self._progress.get(group)
            if previous is None or previous.committed_total != result.committed_total \
                    or sum(result.lag.values()) == 0:
                self._progress[group] = _Progress(result.committed_total, now)
            metrics.KAFKA_CONSUMER_LAST_PROGRESS.labels(group).set(self._progress[group].at)
        for group, topic in self._exported - seen:
            with contextlib.suppress(KeyError):
                metrics.KAFKA_CONSUMER_LAG.remove(group, topic)
        self._exported = seen
        self._latest = results
        return results

    def states(self) -> dict[str, GroupState]:
        return {
            group: GroupState(
                lag=dict(self._latest[group].lag) if group in self._latest else None,
                last_progress=self._progress[group].at if group in self._progress else None,
                error=self._errors.get(group),
                committed_offsets=group not in self._empty,
            )
            for group in self.groups
        }

    def status(self) -> dict[str, Any]:
        """``states`` as plain data (tests and logs)."""
        return {"groups": {group: {"lag": state.lag, "last_progress": state.last_progress,
                                   "error": state.error,
                                   "committed_offsets": state.committed_offsets}
                           for group, state in self.states().items()}}

    def close(self) -> None:
        self.source.close()


class MemoryLagSource:
    """Offsets of the in-process bus (``InMemoryBus.committed`` / ``end_offsets``)."""

    def __init__(self, bus: Any, topics: Iterable[str] = TOPICS) -> None:
        self.bus = bus
        self.topics = tuple(topics)

    def committed(self, group: str) -> dict[TopicPartition, int]:
        result: dict[TopicPartition, int] = {}
        for topic in self.topics:
            for partition, offset in self.bus.committed(group, topic).items():
                result[(topic, partition)] = offset
        return result

    def high_watermarks(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        ends: dict[str, dict[int, int]] = {}
        result: dict[TopicPartition, int] = {}
        for topic, partition in partitions:
            if topic not in ends:
                ends[topic] = self.bus.end_offsets(topic)
            if partition in ends[topic]:
                result[(topic, partition)] = ends[topic][partition]
        return result

    def close(self) -> None:
        return None


class KafkaLagSource:
    """Committed offsets and watermarks through plain consumers that never subscribe:
    one per group for its committed offsets (created lazily and kept, so at most one
    per configured group) and one that only asks for metadata and watermarks.

    Not the admin API's ``list_consumer_group_offsets``: librdkafka (up to 2.16 at
    least, confluentinc/librdkafka#4605) aborts the whole process with
    ``rd_kafka_enq_once_del_source_return: Assertion `eonce->refcnt > 0'`` when the
    coordinator connection drops during that request - a broker restart killed the
    daemon. A consumer's own ``committed`` takes another code path and survives it.
    """

    def __init__(self, bootstrap: str, timeout: float, client_id: str = "bgmock-twin-lag") -> None:
        self.bootstrap = bootstrap
        self.timeout = timeout
        self.client_id = client_id
        self._consumer: Any = None
        self._group_consumers: dict[str, Any] = {}

    def _config(self, group: str) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "client.id": self.client_id,
                "group.id": group, "enable.auto.commit": False, "log_level": 3}

    def _metadata_consumer(self) -> Any:
        from confluent_kafka import Consumer

        if self._consumer is None:
            self._consumer = Consumer(self._config(f"{self.client_id}-watermarks"))
        return self._consumer

    def _group_consumer(self, group: str) -> Any:
        from confluent_kafka import Consumer

        consumer = self._group_consumers.get(group)
        if consumer is None:
            consumer = self._group_consumers[group] = Consumer(self._config(group))
        return consumer

    def committed(self, group: str) -> dict[TopicPartition, int]:
        from confluent_kafka import TopicPartition as KafkaTopicPartition

        deadline = time.monotonic() + self.timeout
        metadata = self._metadata_consumer().list_topics(timeout=self.timeout)
        partitions = [KafkaTopicPartition(name, p)
                      for name, topic in sorted(metadata.topics.items())
                      if not name.startswith("__") and topic.error is None
                      for p in sorted(topic.partitions)]
        if not partitions:
            return {}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("committed offsets not read within the timeout")
        answer = self._group_consumer(group).committed(partitions, timeout=remaining)
        result: dict[TopicPartition, int] = {}
        for tp in answer:
            if tp.error is None and tp.offset >= 0:
                result[(tp.topic, tp.partition)] = int(tp.offset)
        return result

    def high_watermarks(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        from confluent_kafka import TopicPartition as KafkaTopicPartition

        consumer = self._metadata_consumer()
        deadline = time.monotonic() + self.timeout
        result: dict[TopicPartition, int] = {}
        for topic, partition in partitions:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("watermarks not read within the timeout")
            _low, high = consumer.get_watermark_offsets(
                KafkaTopicPartition(topic, partition), timeout=remaining, cached=False)
            if high is not None and high >= 0:
                result[(topic, partition)] = int(high)
        return result

    def close(self) -> None:
        consumers = [*self._group_consumers.values(),
                     *([self._consumer] if self._consumer is not None else [])]
        self._group_consumers = {}
        self._consumer = None
        for consumer in consumers:
            try:
                consumer.close()
            except Exception as exc:  # closing a consumer of a dead broker may fail
                log.debug("lag_consumer_close_failed", error=repr(exc))


def lag_source_for(bus: Any, bootstrap: str | None, timeout: float) -> LagSource | None:
    """The lag source matching the bus in use (None when there is no bus)."""
    if bus is None:
        return None
    if hasattr(bus, "committed") and hasattr(bus, "end_offsets"):
        return MemoryLagSource(bus)
    if bootstrap:
        return KafkaLagSource(bootstrap, timeout)
    return None
