"""``KafkaConsumer``: never auto-commits (the caller commits after handling: at
least once); joins a group, or - for the twin's tracker - takes every partition
by manual assignment and, after an outage and every few seconds, checks that it
still reads the same log (new partitions, re-created topics).

A group that starts a partition at its end ("latest", no committed offset) commits
that start position at once, as Spring Kafka does by default
(``AssignmentCommitOption.LATEST_ONLY_NO_TX``): otherwise a consumer restarted
before it read anything there would start at the (new) end again and skip every
record produced while it was down. The start commit covers no record, so it never
runs ahead of what the caller stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from bgmock_twin.bus.base import BusError, Record
from bgmock_twin.bus.kafka.client import Cluster, ErrorState, as_bytes, log, to_bus_error

# how often a manually assigned consumer looks for new partitions and re-created topics
REFRESH_SECONDS = 5.0
# the least time between two checks after an outage while the log is not verified yet
RECHECK_SECONDS = 1.0


def _headers(msg: Message) -> tuple[tuple[str, bytes], ...]:
    raw: Any = msg.headers()
    if not raw:
        return ()
    return tuple([(k if k.__class__ is str else str(k),
                   v if v.__class__ is bytes else as_bytes(v) or b"") for k, v in raw])


class KafkaConsumer:
    """``EventConsumer``: group subscription or manual assignment of every partition."""

    def __init__(
        self,
        bus: Cluster,
        group_id: str,
        topics: Sequence[str],
        *,
        from_beginning_if_new: bool,
        manual_assign: bool,
    ) -> None:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        self._bus = bus
        self._state = ErrorState(f"{bus.metrics_label}_consumer", self.broker_lost)
        self._topics = list(topics)
        self._manual = manual_assign
        self._from_beginning = from_beginning_if_new
        self._group_id = group_id
        config = bus.base_config(self._state)
        session = bus.session_timeout_ms
        config.update({
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest" if from_beginning_if_new else "latest",
            "session.timeout.ms": session,
            "heartbeat.interval.ms": max(100, session // 3),
            "max.poll.interval.ms": max(300000, session),
            "enable.partition.eof": False,
            "topic.metadata.refresh.interval.ms": 10000,
        })
        if manual_assign:
            # positions are chosen explicitly on assignment; a position the log no
            # longer has (truncated under us) restarts at the oldest record, not the end
            config["auto.offset.reset"] = "earliest"
        self._consumer = Consumer(config)
        self._ready = False
        self._closed = False
        self._assigned: set[tuple[str, int]] = set()
        self._assigned_once = False
        self._topic_ids: dict[str, str] = {}
        self._outage = False
        self._last_assign_try = 0.0
        self._last_liveness_check = 0.0
        # start positions ("latest" resolved) not committed yet, by partition
        self._start_commits: dict[tuple[str, int], int] = {}
        self._last_start_commit_try = 0.0
        if manual_assign:
            self._try_manual_assign(timeout=5.0)
        else:
            self._consumer.subscribe(self._topics, on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_revoke)

    @property
    def group_id(self) -> str:
        return self._group_id

    def broker_lost(self) -> None:
        self._outage = True
        self._bus.broker_lost()

    # --- assignment -----------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self._from_beginning:
            self._assign_at_end_if_new(consumer, partitions)
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self._ready = True
        log.debug("kafka_partitions_assigned", group=self._group_id, count=len(partitions))

    def _assign_at_end_if_new(self, consumer: Consumer,
                              partitions: list[TopicPartition]) -> None:
        """``auto.offset.reset=latest``, but fixed now: a partition without a committed
        offset starts at its current end, looked up at assignment. librdkafka would
        resolve "latest" lazily, at the first fetch, and a record produced in between
        would be skipped; here everything produced after the assignment is read.
        If the lookups fail, librdkafka's own reset applies (the same, lazily).
        The positions resolved at the end are committed (see the module's docstring)."""
        try:
            committed = consumer.committed(partitions, timeout=5.0)
            start: list[TopicPartition] = []
            resolved: list[TopicPartition] = []
            for tp in committed:
                offset = tp.offset
                if offset < 0:
                    offset = self._log_end(tp.topic, tp.partition, 5.0)
                    resolved.append(TopicPartition(tp.topic, tp.partition, offset))
                start.append(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            log.debug("kafka_start_offsets_failed", group=self._group_id, error=str(exc))
            return
        consumer.assign(start)
        self._commit_start(resolved)

    def _log_end(self, topic: str, partition: int, timeout: float) -> int:
        """The partition's end as the broker reports it now (what "latest" resolves to)."""
        _low, high = self._consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout, cached=False)
        if high is None or high < 0:
            raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "no log end offset"))
        return int(high)

    def _commit_start(self, start: list[TopicPartition]) -> None:
        """Commit the positions a partition without a committed offset starts at; one
        that fails is retried at the next poll (until a record commit covers it)."""
        for tp in start:
            self._start_commits[(tp.topic, tp.partition)] = tp.offset
        self._retry_start_commits(force=True)

    def _retry_start_commits(self, force: bool = False) -> None:
        if not self._start_commits:
            return
        now = time.monotonic()
        if not force and now - self._last_start_commit_try < RECHECK_SECONDS:
            return  # a broker that is away is not asked at every poll
        self._last_start_commit_try = now
        pending = [TopicPartition(t, p, o) for (t, p), o in self._start_commits.items()]
        try:
            self._consumer.commit(offsets=pending, asynchronous=False)
        except KafkaException as exc:
            log.debug("kafka_start_commit_failed", group=self._group_id, error=str(exc))
            return
        self._start_commits.clear()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned -= {(tp.topic, tp.partition) for tp in partitions}
        for tp in partitions:
            self._start_commits.pop((tp.topic, tp.partition), None)

    def _try_manual_assign(self, timeout: float) -> None:
        """Assign every partition not yet assigned, from the committed offset if any."""
        self._last_assign_try = time.monotonic()
        try:
            metadata = self._consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            log.debug("kafka_metadata_failed", group=self._group_id, error=str(exc))
            return
        wanted: list[TopicPartition] = []
        for topic in self._topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                continue  # not created yet: retried from poll()
            wanted.extend(TopicPartition(topic, p) for p in sorted(meta.partitions)
                          if (topic, p) not in self._assigned)
        if wanted and self._assign_from_committed(wanted, timeout):
            self._remember_topic_ids(timeout)
        assigned_topics = {t for t, _ in self._assigned}
        self._ready = all(t in assigned_topics for t in self._topics)

    def _assign_from_committed(self, partitions: list[TopicPartition], timeout: float) -> bool:
        """Assign ``partitions`` at the group's committed offsets. Without one, the
        first assignment starts at the beginning or the end (``from_beginning_if_new``);
        a partition that appears later (new, or its topic created later) is new to
        this reader, so it is read from its beginning. A start at the end is looked up
        now (not resolved lazily at the first fetch, which would skip a record
        produced in between) and committed; False (retried later) if a lookup fails."""
        first = not self._assigned_once
        start: list[TopicPartition] = []
        resolved: list[TopicPartition] = []
        try:
            committed = self._consumer.committed(partitions, timeout=timeout)
            for tp in committed:
                offset = tp.offset
                if offset < 0 and first and not self._from_beginning:
                    offset = self._log_end(tp.topic, tp.partition, timeout)
                    resolved.append(TopicPartition(tp.topic, tp.partition, offset))
                elif offset < 0:
                    offset = OFFSET_BEGINNING
                start.append(TopicPartition(tp.topic, tp.partition, offset))
        except KafkaException as exc:
            log.debug("kafka_committed_lookup_failed", group=self._group_id, error=str(exc))
            return False
        self._consumer.incremental_assign(start)
        self._assigned |= {(tp.topic, tp.partition) for tp in start}
        self._assigned_once = True
        self._commit_start(resolved)
        return True

    def _remember_topic_ids(self, timeout: float) -> None:
        try:
            self._topic_ids.update(self._bus.topic_ids(self._topics, timeout))
        except Exception as exc:  # ids are a refinement: without them, watermarks tell
            log.debug("kafka_topic_ids_failed", group=self._group_id, error=repr(exc))

    def _refresh_assignment(self, timeout: float, after_outage: bool) -> bool:
        """Pick up new partitions and re-read re-created topics from the beginning;
        True once every topic was found and checked."""
        self._last_assign_try = time.monotonic()
        try:
            metadata = self._consumer.list_topics(timeout=timeout)
        except KafkaException as exc:
            log.debug("kafka_metadata_failed", group=self._group_id, error=str(exc))
            return False
        try:
            ids = self._bus.topic_ids(self._topics, timeout)
        except Exception as exc:
            log.debug("kafka_topic_ids_failed", group=self._group_id, error=repr(exc))
            ids = {}
        complete = True
        added: list[TopicPartition] = []
        reset: list[TopicPartition] = []
        for topic in self._topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                complete = False  # gone (a broker that lost it): checked again later
                continue
            assigned = sorted(p for t, p in self._assigned if t == topic)
            old_id, new_id = self._topic_ids.get(topic), ids.get(topic)
            if new_id is None and after_outage:
                complete = False  # cannot tell yet whether it is the same log
            if old_id is not None and new_id is not None:
                recreated = old_id != new_id
            else:
                recreated = after_outage and self._behind_log_end(topic, assigned, timeout)
            if new_id is not None:
                self._topic_ids[topic] = new_id
            if recreated:
                reset.extend(TopicPartition(topic, p, OFFSET_BEGINNING)
                             for p in sorted(meta.partitions))
                if assigned:
                    self._consumer.incremental_unassign(
                        [TopicPartition(topic, p) for p in assigned])
                    self._assigned -= {(topic, p) for p in assigned}
            else:
                added.extend(TopicPartition(topic, p) for p in sorted(meta.partitions)
                             if (topic, p) not in self._assigned)
        if reset:
            # offsets committed for a re-created topic may be our own, from the old
            # log: the new one is read from its beginning (repeats are harmless)
            self._consumer.incremental_assign(reset)
            self._assigned |= {(tp.topic, tp.partition) for tp in reset}
            log.warning("kafka_topics_recreated", group=self._group_id,
                        topics=sorted({tp.topic for tp in reset}))
        if added:
            if not self._assign_from_committed(added, timeout):
                return False
            log.info("kafka_partitions_added", group=self._group_id,
                     partitions=[f"{tp.topic}[{tp.partition}]" for tp in added])
        return complete

    def _behind_log_end(self, topic: str, partitions: list[int], timeout: float) -> bool:
        """Without topic ids: a position beyond the end of the log means the log is
        not the one that was read (it restarted)."""
        if not partitions:
            return False
        positions = self._consumer.position([TopicPartition(topic, p) for p in partitions])
        for tp in positions:
            if tp.offset < 0:
                continue
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=timeout, cached=False)
            except KafkaException:
                continue
            if high is not None and 0 <= high < tp.offset:
                return True
        return False

    def assignment_ready(self) -> bool:
        return self._ready and not self._closed

    def wakeup(self) -> None:
        return None  # librdkafka's consume cannot be interrupted: it ends within its timeout

    # --- consuming ------------------------------------------------------------------
    def poll(self, timeout: float, max_records: int = 500) -> list[Record]:
        if self._closed:
            raise BusError("consumer is closed")
        if self._manual:
            self._maintain_assignment(timeout)
        if self._start_commits:
            self._retry_start_commits()
        try:
            messages = self._consumer.consume(num_messages=max_records, timeout=timeout)
        except (KafkaException, RuntimeError) as exc:
            raise to_bus_error(exc, "consume") from None
        records: list[Record] = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                self._state.error(err)
                if err.fatal():
                    raise BusError(f"fatal consumer error: {err.name()}: {err.str()}")
                continue
            timestamp_type, timestamp = msg.timestamp()
            records.append(Record(
                msg.topic() or "",
                msg.partition() or 0,
                msg.offset() or 0,
                as_bytes(msg.key()),
                as_bytes(msg.value()),
                _headers(msg),
                timestamp if timestamp_type else 0,
            ))
        if records:
            self._state.ok()
        elif self._state.unreachable_since is not None:
            self._raise_if_unreachable(timeout)
        return records

    def _maintain_assignment(self, timeout: float) -> None:
        since = time.monotonic() - self._last_assign_try
        budget = min(2.0, max(0.5, timeout))
        if not self._ready:
            if since > 2.0:
                self._try_manual_assign(timeout=budget)
        elif self._outage and self._state.unreachable_since is None:
            # the broker answers again: is it still the log that was being read?
            if since > RECHECK_SECONDS and self._refresh_assignment(budget, after_outage=True):
                self._outage = False
        elif since > REFRESH_SECONDS and not self._outage:
            self._refresh_assignment(budget, after_outage=False)

    def _raise_if_unreachable(self, timeout: float) -> None:
        """After a transport error, nothing arriving may mean the broker is gone: ask."""
        now = time.monotonic()
        if now - self._last_liveness_check < 1.0:
            raise BusError("kafka is unreachable")
        self._last_liveness_check = now
        try:
            self._consumer.list_topics(timeout=max(0.5, min(timeout, 2.0)))
        except KafkaException as exc:
            raise to_bus_error(exc, "kafka is unreachable") from None
        self._state.ok()

    def commit(self, records: Sequence[Record]) -> None:
        """Commit the offsets after ``records``; a partition whose position is before
        them (read again from the beginning since) is left out: those records came
        from a log that is gone, and committing them would skip the new one."""
        if not records:
            return
        if self._closed:
            raise BusError("consumer is closed")
        offsets: dict[tuple[str, int], int] = {}
        for record in records:
            tp = (record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        positions = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(
            [TopicPartition(t, p) for t, p in offsets])}
        safe = [TopicPartition(t, p, o) for (t, p), o in offsets.items()
                if positions.get((t, p), OFFSET_INVALID) >= o]
        if not safe:
            return
        try:
            self._consumer.commit(offsets=safe, asynchronous=False)
        except KafkaException as exc:
            raise to_bus_error(exc, "commit") from None
        for done in safe:  # a start position must never be committed after a record's
            self._start_commits.pop((done.topic, done.partition), None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except Exception:  # closing must never raise
            log.debug("kafka_consumer_close_failed", group=self._group_id)
