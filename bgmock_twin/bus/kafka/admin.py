"""``KafkaBus``: the cluster as the twin sees it - the clients' shared settings,
topics ensured (and ensured again after an outage, with their partition count),
topic ids, the liveness check - and the factory of producers and consumers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bgmock_twin.bus.base import BusError
from bgmock_twin.bus.kafka.client import ErrorState, QuietLibrdkafkaLog, log, to_bus_error
from bgmock_twin.bus.kafka.consumer import KafkaConsumer
from bgmock_twin.bus.kafka.producer import KafkaProducer


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
            raise to_bus_error(exc, f"create topic {topic}") from None
        except Exception as exc:
            raise to_bus_error(exc, f"create topic {topic}") from None
    return refused


class KafkaBus:
    """``EventBus`` over Kafka. ``metrics_label`` prefixes the ``client`` metric label."""

    name = "kafka"
    poll_seconds = 0.2

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
        self._admin_state = ErrorState(f"{metrics_label}_admin", self.broker_lost)
        self._lock = threading.Lock()
        # topics this bus ensured (name -> partitions), ensured again after an outage
        self._wanted: dict[str, int] = {}
        self._topics_suspect = threading.Event()
        self._reensure_lock = threading.Lock()
        self._last_reensure_failure = 0.0

    def base_config(self, state: ErrorState) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            "error_cb": state.error,
            "logger": QuietLibrdkafkaLog(),
            "log.connection.close": False,
            "reconnect.backoff.max.ms": 2000,
            **self._extra,
        }

    def _admin_client(self) -> AdminClient:
        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(self.base_config(self._admin_state))
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
            raise to_bus_error(exc, "list topics") from None
        missing = [t for t in topics if t not in existing]
        if not missing:
            return
        # -1 = the broker's default replication factor; brokers too old for it get 1.
        retry = _create_topics(admin, missing, partitions, replication_factor=-1,
                               timeout=timeout)
        if retry:
            _create_topics(admin, retry, partitions, replication_factor=1, timeout=timeout)
        log.info("kafka_topics_created", topics=missing, partitions=partitions)

    def broker_lost(self) -> None:
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
            self.broker_lost()
            raise to_bus_error(exc, "metadata request") from None
        self._admin_state.ok()

    def close(self) -> None:
        with self._lock:
            self._admin = None
