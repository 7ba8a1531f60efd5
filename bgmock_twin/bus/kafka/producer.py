"""``KafkaProducer``: the Java client's partitioner, ``acks=all``, no topic
auto-creation, and a ``flush`` that raises unless every message was acknowledged
(so an outbox row is only marked published once the broker has it). A message
produced with its own ``on_delivery`` (the sender's, one per payment) reports there
instead, served by ``poll``, with no flush per message.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError, Delivery
from bgmock_twin.bus.kafka.client import Cluster, ErrorState, log, to_bus_error


class KafkaProducer:
    """``EventProducer``: queue with ``produce``, confirm with ``flush``."""

    def __init__(self, bus: Cluster) -> None:
        self._bus = bus
        self._state = ErrorState(f"{bus.metrics_label}_producer", bus.broker_lost)
        config = bus.base_config(self._state)
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

    def _failed(self, err: KafkaError, msg: Message) -> str:
        reason = (err.name() or "unknown").lower().lstrip("_")
        metrics.KAFKA_CLIENT_ERRORS.labels(client=self._state.client, reason=reason).inc()
        return f"{msg.topic()}: {err.name()}: {err.str()}"

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        failure = self._failed(err, msg)
        with self._lock:
            self._failures.append(failure)

    def _report_to(self, on_delivery: Delivery) -> Callable[[KafkaError | None, Message], None]:
        def delivered(err: KafkaError | None, msg: Message) -> None:
            on_delivery(None if err is None else self._failed(err, msg))

        return delivered

    def produce(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        on_delivery: Delivery | None = None,
    ) -> None:
        if self._closed:
            raise BusError("producer is closed")
        self._bus.reensure_topics()
        kwargs: dict[str, Any] = {
            "value": value,
            "key": key.encode() if key is not None else None,
            "on_delivery": self._delivered if on_delivery is None
            else self._report_to(on_delivery),
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
                raise to_bus_error(exc, "produce") from None

    def poll(self, timeout: float) -> None:
        try:
            self._producer.poll(timeout)
        except KafkaException as exc:
            raise to_bus_error(exc, "poll") from None

    def flush(self, timeout: float) -> None:
        try:
            remaining = self._producer.flush(timeout)
        except KafkaException as exc:
            raise to_bus_error(exc, "flush") from None
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
