"""The transactional outbox: rows written with the state change, drained to the bus.

A service writes its event as an ``outbox_events`` row in the same database
transaction as the state change (``add_event``). A publisher thread per service
wakes about every ``interval`` seconds (fixed rate, like Spring's
``@Scheduled(fixedRate = 1000)``), sends every unpublished row in id order and
marks the rows published only after the bus confirmed them (``flush``). If the
bus fails, the rows stay and are sent again next time: at least once. A beat after
one that left nothing unpublished, with no outbox row committed since
(``Database.outbox_commits``), has nothing to send and skips the query: an idle
emulator does not read its three outboxes every second. Each record
carries the ``__TypeId__`` header of the producing service's own class: the banks'
``com.bankgood.bank.event.<Class>``, the clearing's ``com.clearingservice.event.<Class>``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError, EventProducer
from bgmock_twin.contract import (
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    TYPE_ID_HEADER,
    Event,
    encode_event,
)
from bgmock_twin.emulator.db import Database, note_outbox_row, utcnow
from bgmock_twin.logs import get_logger
from bgmock_twin.workers import Worker

log = get_logger(__name__)

BATCH = 500
FLUSH_TIMEOUT_SECONDS = 5.0
CLASS_BY_TOPIC = {
    TOPIC_INITIATED: "OutgoingTransactionEvent",
    TOPIC_FORWARDED: "IncomingTransactionEvent",
    TOPIC_PROCESSED: "TransactionResponseEvent",
    TOPIC_COMPLETED: "TransactionResponseEvent",
}
BANK_TYPE_PACKAGE = "com.bankgood.bank.event"
CLEARING_TYPE_PACKAGE = "com.clearingservice.event"


def type_headers(service: str) -> dict[str, dict[str, bytes]]:
    """The ``__TypeId__`` header of each topic's records as ``service`` writes them."""
    package = CLEARING_TYPE_PACKAGE if service == "clearing" else BANK_TYPE_PACKAGE
    return {topic: {TYPE_ID_HEADER: f"{package}.{name}".encode()}
            for topic, name in CLASS_BY_TOPIC.items()}


def add_event(
    conn: Connection,
    table: sa.Table,
    topic: str,
    key: str | None,
    event: Event,
    dates: str = "null",
) -> None:
    """Insert the outbox row of ``event`` (inside the caller's transaction)."""
    payload, _headers = encode_event(event, dates=dates)
    note_outbox_row(conn)
    conn.execute(_insert(table), {
        "transaction_id": event.transaction_id,
        "topic": topic,
        "message_key": key,
        "payload": payload.decode(),
        "published": False,
        "created_at": utcnow(),
    })


_INSERTS: dict[str, sa.Insert] = {}


def _insert(table: sa.Table) -> sa.Insert:
    """One insert statement object per outbox table (built once, cached by SQLAlchemy)."""
    key = f"{table.metadata.info.get('service')}.{table.name}"
    statement = _INSERTS.get(key)
    if statement is None:
        statement = _INSERTS[key] = table.insert()
    return statement


class OutboxPublisher(Worker):
    """Drains one service's outbox to the bus on a fixed cadence (a ``Worker`` thread)."""

    def __init__(
        self,
        service: str,
        db: Database,
        table: sa.Table,
        producer: EventProducer,
        interval: float,
        stalled: Callable[[], bool],
    ) -> None:
        super().__init__(f"emulator-outbox-{service}")
        self.service = service
        self._db = db
        self._table = table
        self._producer = producer
        self._interval = interval
        self._stalled = stalled
        self._next_run: float | None = None
        self._failing = False
        self._drained_at: int | None = None  # outbox_commits when a beat left none
        self.cycles = 0
        self.queries_skipped = 0
        self._headers = type_headers(service)
        self._default_headers = self._headers[TOPIC_COMPLETED]
        self._select_pending = (
            sa.select(table.c.id, table.c.topic, table.c.message_key, table.c.payload)
            .where(table.c.published.is_(False)).order_by(table.c.id).limit(BATCH))
        self._mark_published = table.update().where(
            table.c.id.in_(sa.bindparam("ids", expanding=True))).values(published=True)

    def step(self) -> None:
        """One beat: wait for it, then publish (unless the service is stalled)."""
        if self._next_run is None:
            self._next_run = time.monotonic() + self._interval
        if self.wait(max(0.0, self._next_run - time.monotonic())):
            return
        self._next_run += self._interval
        now = time.monotonic()
        if self._next_run < now:  # fell behind (a slow flush): skip missed beats, no burst
            self._next_run = now + self._interval
        if self._stalled():
            return
        self.cycles += 1
        commits = self._db.outbox_commits
        if commits == self._drained_at:
            self.queries_skipped += 1
            return
        self.publish_pending()
        if not self.stopping:
            self._drained_at = commits
        if self._failing:
            self._failing = False
            log.info("emulator_outbox_recovered", service=self.service)

    def on_error(self, exc: Exception) -> None:
        """The rows stay unpublished and go out on a later beat (no back-off: the
        fixed cadence is the retry)."""
        if isinstance(exc, BusError):
            self._failed("bus", exc)
        elif isinstance(exc, SQLAlchemyError):
            self._failed("database", exc)
        else:  # the publisher thread must survive anything
            log.exception("emulator_outbox_unexpected_error", service=self.service)
            self._failed("unexpected", exc)

    def _failed(self, reason: str, exc: BaseException) -> None:
        metrics.EMULATOR_OUTBOX_FAILURES.labels(service=self.service, reason=reason).inc()
        if not self._failing:
            self._failing = True
            log.warning("emulator_outbox_publish_failed", service=self.service, reason=reason,
                        error=str(exc))

    def publish_pending(self) -> int:
        """Send every unpublished row; return how many were marked published."""
        total = 0
        while not self.stopping:
            with self._db.begin() as conn:
                rows = conn.execute(self._select_pending).all()
            if not rows:
                break
            for row in rows:
                headers = self._headers.get(row.topic, self._default_headers)
                self._producer.produce(row.topic, row.message_key, row.payload.encode(), headers)
            self._producer.flush(FLUSH_TIMEOUT_SECONDS)
            ids = [row.id for row in rows]
            with self._db.begin() as conn:
                conn.execute(self._mark_published, {"ids": ids})
            total += len(ids)
            metrics.EMULATOR_OUTBOX_PUBLISHED.labels(service=self.service).inc(len(ids))
            if len(rows) < BATCH:
                break
        return total


def drop_oldest_unpublished(db: Database, table: sa.Table) -> dict[str, str | None] | None:
    """Delete the oldest unpublished row (the books fault "event lost")."""
    with db.begin() as conn:
        row = conn.execute(
            db.locked(sa.select(table.c.id, table.c.transaction_id, table.c.topic)
                      .where(table.c.published.is_(False)).order_by(table.c.id).limit(1))
        ).first()
        if row is None:
            return None
        conn.execute(table.delete().where(table.c.id == row.id))
    transaction_id: uuid.UUID = row.transaction_id
    return {"transactionId": str(transaction_id), "topic": row.topic}
