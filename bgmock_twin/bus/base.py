"""The transport interface shared by the Kafka and the in-process implementations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol


class BusError(Exception):
    """The transport is unavailable or refused an operation; the caller retries later."""


class Record(NamedTuple):
    """One consumed message (immutable; a named tuple because the follower makes one
    for every message, and a tuple is made five times faster than a frozen dataclass)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int = 0

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


# Told once per message produced with it: None when the broker has the message, else
# why it was not delivered. Called on the thread that calls ``poll`` or ``flush``.
Delivery = Callable[[str | None], None]


class EventProducer(Protocol):
    def produce(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        on_delivery: Delivery | None = None,
    ) -> None:
        """Queue one message; raise ``BusError`` if it cannot even be queued. With
        ``on_delivery`` its outcome goes there (and never to ``flush``)."""

    def poll(self, timeout: float) -> None:
        """Serve the delivery reports that arrived (waiting up to ``timeout``)."""

    def flush(self, timeout: float) -> None:
        """Wait until every queued message is acknowledged; raise ``BusError`` if any
        failed or the timeout passed with messages outstanding."""

    def close(self) -> None: ...


class EventConsumer(Protocol):
    def poll(self, timeout: float, max_records: int = 500) -> list[Record]:
        """Up to ``max_records`` records, waiting at most ``timeout`` seconds for the
        first. Raises ``BusError`` when the transport is down."""

    def commit(self, records: Sequence[Record]) -> None:
        """Commit the offsets after these records (synchronously)."""

    def assignment_ready(self) -> bool:
        """True once the consumer has partitions assigned and positioned."""

    def wakeup(self) -> None:
        """Make a ``poll`` waiting on another thread return now (empty), so a stop
        need not wait out the poll's timeout; a no-op where the client cannot (a Kafka
        poll waits inside librdkafka and ends within its timeout)."""

    def close(self) -> None: ...


class EventBus(Protocol):
    """A broker connection factory."""

    name: str
    # How long its consumers' polls wait. An in-memory poll returns at the first
    # record, so this only bounds how often an idle consumer wakes; librdkafka's
    # batch consume waits this long to fill its batch, so on Kafka it is each hop's
    # latency at low rates.
    poll_seconds: float

    def producer(self) -> EventProducer: ...

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        *,
        from_beginning_if_new: bool = True,
        manual_assign: bool = False,
    ) -> EventConsumer:
        """A consumer in ``group_id``. ``manual_assign`` takes every partition without
        a group rebalance (the twin's tracker); otherwise it joins the group."""

    def ensure_topics(self, topics: Sequence[str], partitions: int = 3) -> None: ...

    def check(self, timeout: float) -> None:
        """Raise ``BusError`` unless the broker answers a metadata request in time."""

    def close(self) -> None: ...
