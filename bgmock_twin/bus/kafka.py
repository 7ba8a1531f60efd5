"""The event transport over a real Kafka cluster (confluent-kafka / librdkafka).

Choices that matter for BGMock:
- the producer uses the Java client's partitioner (``murmur2_random``), so a key
  lands in the partition a Spring service would pick; ``acks=all``; ``flush``
  raises ``BusError`` if any message failed or is still outstanding, so an outbox
  row is only marked published once the broker has it;
- consumers never auto-commit: the caller commits ``offset + 1`` synchronously
  after handling, which gives at-least-once delivery;
- manual assignment (the twin's tracker) takes every partition and starts at the
  group's committed offset, or earliest/latest when the group has none;
- librdkafka's own log lines are demoted to DEBUG and its errors are counted in
  ``bgmock_kafka_client_errors_total``; a warning is logged only when a client's
  error state changes, so a broker outage does not flood the log.

After a broker outage nothing may be silently lost, also when the broker lost its
data (an in-memory broker restarted, a topic deleted and re-created):
- producers never auto-create topics (a monitor must not create BGMock's topics
  with the broker's default partition count); the topics a bus ensured are ensured
  again, with their partition count, before it produces after an outage;
- a manually assigned consumer checks its log after an outage and every few
  seconds: a topic whose id changed (re-created) is read again from the beginning,
  new partitions are picked up from their beginning, and offsets of records read
  from a log that is gone are never committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError, Record
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

# Error codes that mean "the cluster cannot be reached right now".
_UNREACHABLE = {
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
}
# how often a manually assigned consumer looks for new partitions and re-created topics
REFRESH_SECONDS = 5.0
# the least time between two checks after an outage while the log is not verified yet
RECHECK_SECONDS = 1.0


class _QuietLibrdkafkaLog:
    """librdkafka's log callback target: everything at DEBUG (errors arrive via error_cb)."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("bgmock_twin.bus.librdkafka")

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.debug(msg, *args)


class _ErrorState:
    """Counts client errors; logs each kind of error once until the client recovers."""

    def __init__(self, client: str, on_unreachable: Callable[[], None] | None = None) -> None:
        self.client = client
        self.on_unreachable = on_unreachable
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self.unreachable_since: float | None = None

    def error(self, err: KafkaError) -> None:
        reason = (err.name() or "unknown").lower().lstrip("_")
        metrics.KAFKA_CLIENT_ERRORS.labels(client=self.client, reason=reason).inc()
        with self._lock:
            if err.code() in _UNREACHABLE and self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
            first = reason not in self._warned
            self._warned.add(reason)
        if err.code() in _UNREACHABLE and self.on_unreachable is not None:
            self.on_unreachable()
        if first:
            log.warning("kafka_client_error", client=self.client, reason=reason,
                        detail=err.str(), fatal=err.fatal())

    def ok(self) -> None:
        with self._lock:
            had = sorted(self._warned)
            self._warned.clear()
            self.unreachable_since = None
        if had:
            log.info("kafka_client_recovered", client=self.client, errors=had)


def _as_bytes(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()


def _headers(msg: Message) -> tuple[tuple[str, bytes], ...]:
    raw: Any = msg.headers() or []
    return tuple((str(k), _as_bytes(v) or b"") for k, v in raw)


def _to_bus_error(exc: BaseException, what: str) -> BusError:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        return BusError(f"{what}: {err.name()}: {err.str()}")
    return BusError(f"{what}: {exc}")


def _create_topics(
    admin: AdminClient, topics: list[str], partitions: int, replication_factor: int,
    timeout: float = 10.0,
) -> list[str]:
    """Create topics, ignoring "already exists"; return those refused for their
    replication factor (only when it was -1)."""
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor)
         for t in topics],
        operation_timeout=timeout, request_timeout=timeout * 1.5,
    )
    refused: list[str] = []
    for topic, future in futures.items():
        try:
            future.result(timeout=timeout * 2)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            if replication_factor == -1 and code in (
                KafkaError.INVALID_REPLICATION_FACTOR, KafkaError.INVALID_REQUEST,
                KafkaError.UNSUPPORTED_VERSION, KafkaError.POLICY_VIOLATION,
            ):
                refused.append(topic)
                continue
            raise _to_bus_error(exc, f"create topic {topic}") from None
        except Exception as exc:
            raise _to_bus_error(exc, f"create topic {topic}") from None
    return refused


class KafkaBus:
    """``EventBus`` over Kafka. ``metrics_label`` prefixes the ``client`` metric label."""

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        session_timeout_ms: int = 10000,
        client_id: str = "bgmock-twin",
        *,
        message_timeout_ms: int = 15000,
        metrics_label: str = "twin",
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.session_timeout_ms = session_timeout_ms
        self.client_id = client_id
        self.message_timeout_ms = message_timeout_ms
        self.metrics_label = metrics_label
        self._extra = dict(extra_config or {})
        self._admin: AdminClient | None = None
        self._admin_state = _ErrorState(f"{metrics_label}_admin", self._broker_lost)
        self._lock = threading.Lock()
        # topics this bus ensured (name -> partitions), ensured again after an outage
        self._wanted: dict[str, int] = {}
        self._topics_suspect = threading.Event()
        self._reensure_lock = threading.Lock()
        self._last_reensure_failure = 0.0

    def _base_config(self, state: _ErrorState) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            "error_cb": state.error,
            "logger": _QuietLibrdkafkaLog(),
            "log.connection.close": False,
            "reconnect.backoff.max.ms": 2000,
            **self._extra,
        }

    def _admin_client(self) -> AdminClient:
        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(self._base_config(self._admin_state))
            return self._admin

    # --- EventBus -------------------------------------------------------------------
    def producer(self) -> KafkaProducer:
        return KafkaProducer(self)

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        *,
        from_beginning_if_new: bool = True,
        manual_assign: bool = False,
    ) -> KafkaConsumer:
        return KafkaConsumer(self, group_id, topics, from_beginning_if_new=from_beginning_if_new,
                             manual_assign=manual_assign)

    def ensure_topics(self, topics: Sequence[str], partitions: int = 3,
                      timeout: float = 10.0) -> None:
        """Create the topics that do not exist; remembered, so that they are ensured
        again before this bus produces after a broker outage."""
        for topic in topics:
            self._wanted[topic] = partitions
        admin = self._admin_client()
        try:
            existing = set(admin.list_topics(timeout=timeout).topics)
        except KafkaException as exc:
            raise _to_bus_error(exc, "list topics") from None
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        # -1 = the broker's default replication factor; brokers too old for it get 1.
        retry = _create_topics(admin, missing, partitions, replication_factor=-1,
                               timeout=timeout)
        if retry:
            _create_topics(admin, retry, partitions, replication_factor=1, timeout=timeout)
        log.info("kafka_topics_created", topics=missing, partitions=partitions)

    def _broker_lost(self) -> None:
        """A client lost the broker: it may come back without the topics (in-memory)."""
        self._topics_suspect.set()

    def reensure_topics(self) -> None:
        """Before producing after an outage: make sure the ensured topics exist (with
        their partition count), so that no producer's write creates them with the
        broker's default or waits for a topic nobody will create. Raises ``BusError``
        while that cannot be verified (then nothing is queued)."""
        if not self._topics_suspect.is_set() or not self._wanted:
            return
        with self._reensure_lock:
            if not self._topics_suspect.is_set():
                return
            if time.monotonic() - self._last_reensure_failure < 0.5:
                raise BusError("kafka topics not verified since the broker was lost")
            by_partitions: dict[int, list[str]] = {}
            for topic, partitions in self._wanted.items():
                by_partitions.setdefault(partitions, []).append(topic)
            try:
                for partitions, topics in by_partitions.items():
                    self.ensure_topics(topics, partitions, timeout=2.0)
            except BusError:
                self._last_reensure_failure = time.monotonic()
                raise
            self._topics_suspect.clear()

    def topic_ids(self, topics: Sequence[str], timeout: float) -> dict[str, str]:
        """Each existing topic's id (a re-created topic has a new one); topics that
        cannot be described now are left out."""
        futures = self._admin_client().describe_topics(
            TopicCollection(list(topics)), request_timeout=timeout)
        ids: dict[str, str] = {}
        for topic, future in futures.items():
            try:
                description = future.result(timeout=timeout + 1)
            except Exception as exc:  # unknown topic, broker away, or too old for ids
                log.debug("kafka_topic_not_described", topic=topic, error=str(exc)[:200])
                continue
            topic_id = getattr(description, "topic_id", None)
            if topic_id is not None:
                ids[topic] = str(topic_id)
        return ids

    def check(self, timeout: float) -> None:
        try:
            self._admin_client().list_topics(timeout=timeout)
        except KafkaException as exc:
            self._broker_lost()
            raise _to_bus_error(exc, "metadata request") from None
        self._admin_state.ok()

    def close(self) -> None:
        with self._lock:
            self._admin = None


class KafkaProducer:
    """``EventProducer``: queue with ``produce``, confirm with ``flush``."""

    def __init__(self, bus: KafkaBus) -> None:
        self._bus = bus
        self._state = _ErrorState(f"{bus.metrics_label}_producer", bus._broker_lost)
        config = bus._base_config(self._state)
        config.update({
            "allow.auto.create.topics": False,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "message.timeout.ms": bus.message_timeout_ms,
            "socket.keepalive.enable": True,
        })
        self._producer = Producer(config)
        self._lock = threading.Lock()
        self._failures: list[str] = []
        self._closed = False

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        reason = (err.name() or "unknown").lower().lstrip("_")
        metrics.KAFKA_CLIENT_ERRORS.labels(client=self._state.client, reason=reason).inc()
        with self._lock:
            self._failures.append(f"{msg.topic()}: {err.name()}: {err.str()}")

    def produce(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        if self._closed:
            raise BusError("producer is closed")
        self._bus.reensure_topics()
        kwargs: dict[str, Any] = {
            "value": value,
            "key": key.encode() if key is not None else None,
            "on_delivery": self._delivered,
        }
        if headers:
            kwargs["headers"] = list(headers.items())
        for attempt in range(2):
            try:
                self._producer.produce(topic, **kwargs)
                self._producer.poll(0)
                return
            except BufferError:
                if attempt == 1:
                    raise BusError("producer queue is full") from None
                self._producer.poll(0.5)
            except KafkaException as exc:
                raise _to_bus_error(exc, "produce") from None

    def flush(self, timeout: float) -> None:
        try:
            remaining = self._producer.flush(timeout)
        except KafkaException as exc:
            raise _to_bus_error(exc, "flush") from None
        with self._lock:
            failures, self._failures = self._failures, []
        if failures:
            raise BusError(f"{len(failures)} message(s) not delivered; first: {failures[0]}")
        if remaining > 0:
            raise BusError(f"{remaining} message(s) not acknowledged within {timeout}s")
        self._state.ok()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._producer.flush(1.0)
        except Exception:  # closing must never raise
            log.debug("kafka_producer_close_flush_failed")


class KafkaConsumer:
    """``EventConsumer``: group subscription or manual assignment of every partition."""

    def __init__(
        self,
        bus: KafkaBus,
        group_id: str,
        topics: Sequence[str],
        *,
        from_beginning_if_new: bool,
        manual_assign: bool,
    ) -> None:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        self._bus = bus
        self._state = _ErrorState(f"{bus.metrics_label}_consumer", self._broker_lost)
        self._topics = list(topics)
        self._manual = manual_assign
        self._from_beginning = from_beginning_if_new
        self._group_id = group_id
        config = bus._base_config(self._state)
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
        if manual_assign:
            self._try_manual_assign(timeout=5.0)
        else:
            self._consumer.subscribe(self._topics, on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_revoke)

    @property
    def group_id(self) -> str:
        return self._group_id

    def _broker_lost(self) -> None:
        self._outage = True
        self._bus._broker_lost()

    # --- assignment -----------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(tp.topic, tp.partition) for tp in partitions}
        self._ready = True
        log.debug("kafka_partitions_assigned", group=self._group_id, count=len(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned -= {(tp.topic, tp.partition) for tp in partitions}

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
        this reader, so it is read from its beginning."""
        try:
            committed = self._consumer.committed(partitions, timeout=timeout)
        except KafkaException as exc:
            log.debug("kafka_committed_lookup_failed", group=self._group_id, error=str(exc))
            return False
        first = not self._assigned_once
        start: list[TopicPartition] = []
        for tp in committed:
            offset = tp.offset
            if offset < 0:
                offset = OFFSET_END if first and not self._from_beginning else OFFSET_BEGINNING
            start.append(TopicPartition(tp.topic, tp.partition, offset))
        self._consumer.incremental_assign(start)
        self._assigned |= {(tp.topic, tp.partition) for tp in start}
        self._assigned_once = True
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

    # --- consuming ------------------------------------------------------------------
    def poll(self, timeout: float, max_records: int = 500) -> list[Record]:
        if self._closed:
            raise BusError("consumer is closed")
        if self._manual:
            self._maintain_assignment(timeout)
        try:
            messages = self._consumer.consume(num_messages=max_records, timeout=timeout)
        except (KafkaException, RuntimeError) as exc:
            raise _to_bus_error(exc, "consume") from None
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
                topic=msg.topic() or "",
                partition=msg.partition() or 0,
                offset=msg.offset() or 0,
                key=_as_bytes(msg.key()),
                value=_as_bytes(msg.value()),
                headers=_headers(msg),
                timestamp_ms=timestamp if timestamp_type else 0,
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
            raise _to_bus_error(exc, "kafka is unreachable") from None
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
            raise _to_bus_error(exc, "commit") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except Exception:  # closing must never raise
            log.debug("kafka_consumer_close_failed", group=self._group_id)
