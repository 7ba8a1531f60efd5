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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
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


class _QuietLibrdkafkaLog:
    """librdkafka's log callback target: everything at DEBUG (errors arrive via error_cb)."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("bgmock_twin.bus.librdkafka")

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.debug(msg, *args)


class _ErrorState:
    """Counts client errors; logs each kind of error once until the client recovers."""

    def __init__(self, client: str) -> None:
        self.client = client
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
    admin: AdminClient, topics: list[str], partitions: int, replication_factor: int
) -> list[str]:
    """Create topics, ignoring "already exists"; return those refused for their
    replication factor (only when it was -1)."""
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor)
         for t in topics],
        operation_timeout=10, request_timeout=15,
    )
    refused: list[str] = []
    for topic, future in futures.items():
        try:
            future.result(timeout=20)
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
        self._admin_state = _ErrorState(f"{metrics_label}_admin")
        self._lock = threading.Lock()

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

    def ensure_topics(self, topics: Sequence[str], partitions: int = 3) -> None:
        admin = self._admin_client()
        try:
            existing = set(admin.list_topics(timeout=10).topics)
        except KafkaException as exc:
            raise _to_bus_error(exc, "list topics") from None
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        # -1 = the broker's default replication factor; brokers too old for it get 1.
        retry = _create_topics(admin, missing, partitions, replication_factor=-1)
        if retry:
            _create_topics(admin, retry, partitions, replication_factor=1)
        log.info("kafka_topics_created", topics=missing, partitions=partitions)

    def check(self, timeout: float) -> None:
        try:
            self._admin_client().list_topics(timeout=timeout)
        except KafkaException as exc:
            raise _to_bus_error(exc, "metadata request") from None
        self._admin_state.ok()

    def close(self) -> None:
        with self._lock:
            self._admin = None


class KafkaProducer:
    """``EventProducer``: queue with ``produce``, confirm with ``flush``."""

    def __init__(self, bus: KafkaBus) -> None:
        self._state = _ErrorState(f"{bus.metrics_label}_producer")
        config = bus._base_config(self._state)
        config.update({
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
        self._state = _ErrorState(f"{bus.metrics_label}_consumer")
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
        self._consumer = Consumer(config)
        self._ready = False
        self._closed = False
        self._assigned: set[tuple[str, int]] = set()
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
        if wanted:
            try:
                committed = self._consumer.committed(wanted, timeout=timeout)
            except KafkaException as exc:
                log.debug("kafka_committed_lookup_failed", group=self._group_id, error=str(exc))
                return
            start: list[TopicPartition] = []
            for tp in committed:
                offset = tp.offset
                if offset < 0:
                    offset = OFFSET_BEGINNING if self._from_beginning else OFFSET_END
                start.append(TopicPartition(tp.topic, tp.partition, offset))
            self._consumer.incremental_assign(start)
            self._assigned |= {(tp.topic, tp.partition) for tp in start}
        assigned_topics = {t for t, _ in self._assigned}
        self._ready = all(t in assigned_topics for t in self._topics)

    def assignment_ready(self) -> bool:
        return self._ready and not self._closed

    # --- consuming ------------------------------------------------------------------
    def poll(self, timeout: float, max_records: int = 500) -> list[Record]:
        if self._closed:
            raise BusError("consumer is closed")
        if self._manual and not self._ready and time.monotonic() - self._last_assign_try > 2.0:
            self._try_manual_assign(timeout=min(2.0, max(0.5, timeout)))
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
        if not records:
            return
        if self._closed:
            raise BusError("consumer is closed")
        offsets: dict[tuple[str, int], int] = {}
        for record in records:
            tp = (record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        try:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
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
