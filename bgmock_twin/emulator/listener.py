"""Kafka listeners of the emulated services: one thread per consumer.

Like a Spring ``@KafkaListener`` with manual acknowledgement: poll, hand every
record to the service's handler, commit the batch. A bank listener keeps only
records keyed with its own clearing number (a null key is dropped). The
``__TypeId__`` header is ignored, as BGMock's listeners (fixed target class)
ignore it. A record that is not a valid event is counted and skipped: BGMock's
container delivers such a poison record ten times (no back-off) and then skips
it; decoding the same bytes again cannot succeed, so the emulator skips it at
the first failure, with the same outcome and without the futile work. Its log
line is rate-limited
(``INVALID_LOG_LINES`` per ``INVALID_LOG_WINDOW_SECONDS``, then one summary line),
so a flood of poison messages cannot flood the log - or, in the daemon's embedded
mode, slow every other thread of the process down with it.

For throughput, the records of one poll are handled in one database transaction
(in chunks): each record's state change and outbox row still commit together,
and under load the service's database is taken once per chunk instead of once
per record. If anything in a chunk fails on the database, the chunk is rolled
back and redone one record per transaction, each tried up to
``HANDLER_ATTEMPTS`` times as Spring Kafka's default error handler does (ten
deliveries, no back-off), then logged and skipped. A record whose account write
lost a race on the account's version (``db.StaleAccount``: a REST request wrote
the account in between) succeeds on a later attempt, as BGMock's does. While the
service's consumers are paused by a fault, nothing is handled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError, EventConsumer, Record
from bgmock_twin.contract import Event, InvalidEvent, decode_event
from bgmock_twin.emulator.db import Database, StaleAccount
from bgmock_twin.logs import get_logger
from bgmock_twin.workers import Backoff, Worker

log = get_logger(__name__)

# Spring Kafka's DefaultErrorHandler: FixedBackOff(0, 9), ten deliveries in all.
HANDLER_ATTEMPTS = 10
# A short pause between attempts that failed on the database itself (not a lost race).
DATABASE_RETRY_SECONDS = 0.02
CHUNK = 100
INVALID_LOG_LINES = 20
INVALID_LOG_WINDOW_SECONDS = 10.0

# handler(event, connection or None) -> result label
EventHandler = Callable[[Any, Connection | None], str]


class Listener(Worker):
    """Consumes some topics for one service and dispatches each record by topic
    (a ``Worker`` thread: a failed round waits 0.5 s and the thread goes on)."""

    def __init__(
        self,
        service: str,
        consumer: EventConsumer,
        db: Database,
        handlers: dict[str, EventHandler],
        *,
        own_key: str | None = None,
        paused: Callable[[], bool] = lambda: False,
        unavailable: Callable[[], bool] = lambda: False,
        poll_seconds: float,
    ) -> None:
        """``poll_seconds``: its bus's (``EventBus.poll_seconds``)."""
        super().__init__(f"emulator-listener-{service}-{'+'.join(handlers)}",
                         backoff=Backoff(0.5, 0.5))
        self.service = service
        self.consumer = consumer
        self._poll_seconds = poll_seconds
        self._db = db
        self._handlers = handlers
        self._own_key = own_key.encode() if own_key is not None else None
        self._paused = paused
        self._unavailable = unavailable
        self._ready = threading.Event()
        self._failing = False
        self._counters: dict[tuple[str, str], Any] = {}
        self._invalid_window = time.monotonic()
        self._invalid_logged = 0
        self._invalid_quiet = 0

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        try:
            self.consumer.close()
        except Exception:  # closing must not stop the rest of the shutdown
            log.debug("emulator_consumer_close_failed", service=self.service)

    def wake(self) -> None:
        self.consumer.wakeup()

    def step(self) -> None:
        if self._paused():
            self.wait(0.05)
            return
        if self._unavailable():
            raise BusError("bus down (fault injected)")
        self._note_ready()  # before a long poll too: the in-memory bus is ready at once
        records = self.consumer.poll(self._poll_seconds)
        self._note_ready()
        if not records:
            return
        self._handle_batch(records)
        if self.stopping:
            return  # not all handled: leave them uncommitted
        if self._unavailable():
            raise BusError("bus down (fault injected)")
        self.consumer.commit(records)
        if self._failing:
            self._failing = False
            log.info("emulator_consumer_recovered", service=self.service)

    def _note_ready(self) -> None:
        if not self._ready.is_set() and self.consumer.assignment_ready():
            self._ready.set()

    def on_error(self, exc: Exception) -> None:
        if isinstance(exc, BusError):
            if not self._failing:
                self._failing = True
                log.warning("emulator_consumer_failed", service=self.service, error=str(exc))
        else:  # the listener thread must survive anything
            log.exception("emulator_listener_unexpected_error", service=self.service)

    def _count(self, topic: str, result: str) -> None:
        counter = self._counters.get((topic, result))
        if counter is None:
            counter = self._counters[(topic, result)] = metrics.EMULATOR_EVENTS.labels(
                service=self.service, topic=topic, result=result)
        counter.inc()

    def _handle_batch(self, records: Sequence[Record]) -> None:
        work: list[tuple[Record, Event]] = []
        for record in records:
            event, skipped = self._decode(record)
            if skipped is not None:
                self._count(record.topic, skipped)
            else:
                assert event is not None
                work.append((record, event))
        for start in range(0, len(work), CHUNK):
            # A pause that arrives mid-poll holds the records already fetched.
            while self._paused() and not self.stopping:
                self.wait(0.05)
            if self.stopping:
                return
            chunk = work[start:start + CHUNK]
            try:
                with self._db.begin() as conn:
                    results = [self._call(record, event, conn) for record, event in chunk]
            except (SQLAlchemyError, StaleAccount) as exc:
                if isinstance(exc, StaleAccount):
                    self._lost_race()
                results = [self._handle_alone(record, event) for record, event in chunk]
            for (record, _event), result in zip(chunk, results, strict=True):
                self._count(record.topic, result)

    def _decode(self, record: Record) -> tuple[Event | None, str | None]:
        if self._own_key is not None:
            if record.key is None:
                return None, "null_key"
            if record.key != self._own_key:
                return None, "foreign_key"
        if record.topic not in self._handlers:
            return None, "invalid"
        try:
            return decode_event(record.topic, record.value), None
        except InvalidEvent as exc:
            if self._may_log_invalid():
                log.warning("emulator_invalid_event", service=self.service, topic=record.topic,
                            reason=exc.reason, partition=record.partition,
                            offset=record.offset)
            return None, "invalid"

    def _may_log_invalid(self) -> bool:
        now = time.monotonic()
        if now - self._invalid_window >= INVALID_LOG_WINDOW_SECONDS:
            if self._invalid_quiet:
                log.warning("emulator_invalid_events_not_logged", service=self.service,
                            count=self._invalid_quiet)
            self._invalid_window, self._invalid_logged, self._invalid_quiet = now, 0, 0
        if self._invalid_logged < INVALID_LOG_LINES:
            self._invalid_logged += 1
            return True
        self._invalid_quiet += 1
        return False

    def _call(self, record: Record, event: Event, conn: Connection | None) -> str:
        try:
            return self._handlers[record.topic](event, conn)
        except ValueError as exc:  # an event the handler refuses, before any write
            log.warning("emulator_event_rejected", service=self.service, topic=record.topic,
                        error=str(exc))
            return "invalid"

    def _lost_race(self) -> None:
        metrics.EMULATOR_OPTIMISTIC_LOCK_FAILURES.labels(
            service=self.service, origin="listener").inc()

    def _handle_alone(self, record: Record, event: Event) -> str:
        for attempt in range(1, HANDLER_ATTEMPTS + 1):
            try:
                return self._call(record, event, None)
            except (SQLAlchemyError, StaleAccount) as exc:
                stale = isinstance(exc, StaleAccount)
                if stale:
                    self._lost_race()
                if attempt == HANDLER_ATTEMPTS:
                    log.error("emulator_event_failed", service=self.service, topic=record.topic,
                              partition=record.partition, offset=record.offset,
                              attempts=attempt, error=str(exc))
                    return "error"
                if not stale:
                    time.sleep(DATABASE_RETRY_SECONDS)
        return "error"
