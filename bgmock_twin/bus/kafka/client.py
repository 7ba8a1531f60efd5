"""What every Kafka client of the bus shares: librdkafka's logging demoted to
DEBUG, one error state per client (counted in ``bgmock_kafka_client_errors_total``,
logged once per kind until it recovers), the translation of librdkafka errors to
``BusError``, and the ``Cluster`` a producer or consumer is made from.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError
from bgmock_twin.logs import get_logger

log = get_logger("bgmock_twin.bus.kafka")

# Error codes that mean "the cluster cannot be reached right now".
UNREACHABLE = {
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._TRANSPORT,
    KafkaError._RESOLVE,
    KafkaError._TIMED_OUT,
}


class Cluster(Protocol):
    """What a producer or consumer needs from the bus that made it (``KafkaBus``)."""

    metrics_label: str
    session_timeout_ms: int
    message_timeout_ms: int

    def base_config(self, state: ErrorState) -> dict[str, Any]:
        """The connection settings every client shares, reporting to ``state``."""

    def broker_lost(self) -> None:
        """A client lost the broker (it may come back without the topics)."""

    def reensure_topics(self) -> None:
        """Before producing after an outage: the ensured topics exist again."""

    def topic_ids(self, topics: Sequence[str], timeout: float) -> dict[str, str]:
        """Each existing topic's id (a re-created topic has a new one)."""


class QuietLibrdkafkaLog:
    """librdkafka's log callback target: everything at DEBUG (errors arrive via error_cb)."""

    def __init__(self) -> None:
        self._logger = logging.getLogger("bgmock_twin.bus.librdkafka")

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        self._logger.debug(msg, *args)


class ErrorState:
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
            if err.code() in UNREACHABLE and self.unreachable_since is None:
                self.unreachable_since = time.monotonic()
            first = reason not in self._warned
            self._warned.add(reason)
        if err.code() in UNREACHABLE and self.on_unreachable is not None:
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


def as_bytes(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode()


def to_bus_error(exc: BaseException, what: str) -> BusError:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        return BusError(f"{what}: {err.name()}: {err.str()}")
    return BusError(f"{what}: {exc}")
