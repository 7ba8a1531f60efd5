"""The Kafka follower: reads the four topics with the twin's own consumer group and
feeds every event to the tracker.

- It takes every partition directly (no group rebalance to wait for); a new group
  starts at the end of each topic, an existing one at its committed offsets.
- A message that is not a valid event is counted
  (``bgmock_kafka_messages_invalid_total{topic,reason}``), logged once with its
  topic/partition/offset (a flood is rate-limited to a summary line), and skipped;
  the follower keeps going.
- Offsets are committed only once the ledger has stored what the records changed
  (the ledger's durable sequence number), so a restart neither loses an event nor
  applies one twice (a redelivered event is a repeat to the lifecycle anyway).
- One poll's records are decoded first and handed to the tracker together
  (``Tracker.on_events``: one hold of its lock, its metrics added once); the
  ledger buffers what they changed and its writer stores it in batches.
- A broker outage is logged once, retried with backoff (0.2 s doubling to 5 s), and
  never ends the thread (a ``Worker``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError, EventBus, EventConsumer, Record
from bgmock_twin.contract import TOPICS, Event, InvalidEvent, decode_event
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking.ledger import Ledger
from bgmock_twin.tracking.tracker import Tracker
from bgmock_twin.workers import Backoff, Worker

log = get_logger(__name__)

RECREATE_AFTER_SECONDS = 30.0


class Follower(Worker):
    def __init__(
        self,
        bus: EventBus,
        group_id: str,
        tracker: Tracker,
        ledger: Ledger,
        poll_timeout: float | None = None,
        max_records: int = 500,
    ) -> None:
        super().__init__("kafka-follower", backoff=Backoff(0.2, 5.0),
                         error_event="kafka_follower_error")
        self.bus = bus
        self.group_id = group_id
        self.tracker = tracker
        self.ledger = ledger
        self.poll_timeout = bus.poll_seconds if poll_timeout is None else poll_timeout
        self.max_records = max_records
        self._consumer: EventConsumer | None = None
        self._pending: deque[tuple[int, list[Record]]] = deque()
        self._down_since: float | None = None
        self.records_seen = 0
        self.invalid_seen = 0
        self.last_commit_error: str | None = None
        self._log_budget = LogBudget("kafka_messages_invalid_not_logged")

    def ready(self) -> bool:
        """True once the consumer has its partitions and is positioned."""
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            return bool(consumer.assignment_ready())
        except BusError:
            return False

    @property
    def connected(self) -> bool:
        return self._down_since is None and self._consumer is not None

    # --- the loop (one step: poll, apply, commit what is durable) --------------------------
    def step(self) -> None:
        if self._consumer is None:
            self._consumer = self.bus.consumer(
                self.group_id, list(TOPICS), manual_assign=True,
                from_beginning_if_new=False,
            )
        records = self._consumer.poll(self.poll_timeout, self.max_records)
        if self._down_since is not None:
            log.info("kafka_follower_recovered",
                     outage_seconds=round(time.monotonic() - self._down_since, 1))
            self._down_since = None
        if records:
            self.handle(records)
            self.records_seen += len(records)
            self._pending.append((self.ledger.last_seq, records))
        self._commit_durable()
        self.tracker.expire_parked()

    def on_error(self, exc: Exception) -> None:
        if isinstance(exc, BusError):
            self._outage(exc)
        else:  # the follower never dies of a surprise
            super().on_error(exc)

    def wake(self) -> None:
        consumer = self._consumer
        if consumer is not None:
            consumer.wakeup()

    def on_stop(self) -> None:
        self._shutdown()

    def _outage(self, exc: BusError) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            metrics.KAFKA_CLIENT_ERRORS.labels("follower", "bus_error").inc()
            log.warning("kafka_follower_unavailable", error=str(exc)[:200])
        elif now - self._down_since > RECREATE_AFTER_SECONDS and self._consumer is not None:
            self._close_consumer()
            self._down_since = now

    def handle(self, records: Sequence[Record]) -> None:
        """The records of one poll: decoded, then handed to the tracker together."""
        self.tracker.on_events([(record, self._decode(record)) for record in records])

    def _decode(self, record: Record) -> Event | str:
        """The record's event, or the reason it is none (counted and logged)."""
        try:
            return decode_event(record.topic, record.value)
        except InvalidEvent as exc:
            self.invalid_seen += 1
            metrics.KAFKA_MESSAGES_INVALID.labels(record.topic, exc.reason).inc()
            if self._log_budget.allow():
                log.warning("kafka_message_invalid", topic=record.topic,
                            partition=record.partition, offset=record.offset, reason=exc.reason)
            return exc.reason

    def _commit_durable(self) -> None:
        if not self._pending or self._consumer is None:
            return
        durable = self.ledger.durable_seq
        ready: list[Record] = []
        while self._pending and self._pending[0][0] <= durable:
            ready.extend(self._pending.popleft()[1])
        if not ready:
            return
        try:
            self._consumer.commit(_last_per_partition(ready))
            self.last_commit_error = None
        except BusError as exc:
            metrics.KAFKA_CLIENT_ERRORS.labels("follower", "commit").inc()
            self.last_commit_error = str(exc)[:200]
            log.debug("kafka_commit_failed", error=str(exc)[:200])
            self._pending.appendleft((durable, ready))

    def _shutdown(self) -> None:
        if self._pending:
            self.ledger.flush(2.0)
            self._commit_durable()
        self._close_consumer()

    def _close_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:
                log.debug("kafka_consumer_close_failed", error=repr(exc))


def _last_per_partition(records: Sequence[Record]) -> list[Record]:
    last: dict[tuple[str, int], Record] = {}
    for record in records:
        key = (record.topic, record.partition)
        if key not in last or record.offset > last[key].offset:
            last[key] = record
    return list(last.values())


class LogBudget:
    """At most ``per_window`` log lines per window; what is held back is summed up in
    one line when the next window opens (the counter has every message anyway)."""

    def __init__(self, event: str, per_window: int = 20, window_seconds: float = 10.0) -> None:
        self.event = event
        self.per_window = per_window
        self.window_seconds = window_seconds
        self._window_start = time.monotonic()
        self._used = 0
        self._suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.window_seconds:
            if self._suppressed:
                log.warning(self.event, count=self._suppressed)
            self._window_start, self._used, self._suppressed = now, 0, 0
        if self._used < self.per_window:
            self._used += 1
            return True
        self._suppressed += 1
        return False
