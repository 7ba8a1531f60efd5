"""Where lag is read from: the in-process bus's own offsets, or Kafka through
consumers that never subscribe (committed offsets, watermarks), every call with a
timeout so a slow broker costs one run, never a hung job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

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
