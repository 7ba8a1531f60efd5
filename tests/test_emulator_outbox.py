"""The emulator's outbox publisher on a real (in-memory SQLite) database and the
in-memory bus: an idle beat reads nothing, and no row is left behind for it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from bgmock_twin.bus.memory import InMemoryBus
from bgmock_twin.contract import TOPIC_COMPLETED, Status
from bgmock_twin.contract.tables import bank_metadata, bank_outbox_events
from bgmock_twin.contract.wire import TransactionResponseEvent
from bgmock_twin.emulator.db import Database
from bgmock_twin.emulator.outbox import OutboxPublisher, add_event
from tests.support.ports import wait_for

BEAT = 0.01


class _Outbox:
    def __init__(self) -> None:
        self.db = Database(None, bank_metadata, "bank_a")
        self.bus = InMemoryBus()
        self.consumer = self.bus.consumer("spy", [TOPIC_COMPLETED], from_beginning_if_new=True)
        self.seen: list[str] = []
        self.reads = 0  # SELECTs of the outbox's unpublished rows
        sa.event.listen(self.db.engine, "before_cursor_execute", self._count)
        self.publisher = OutboxPublisher("bank_a", self.db, bank_outbox_events,
                                         self.bus.producer(), interval=BEAT,
                                         stalled=lambda: False)

    def _count(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "outbox_events" in statement:
            self.reads += 1

    def add(self) -> str:
        """A transaction of the service that writes one outbox row."""
        tx = uuid.uuid4()
        with self.db.begin() as conn:
            add_event(conn, bank_outbox_events, TOPIC_COMPLETED, "01",
                      TransactionResponseEvent(tx, Status.SUCCESS))
        return str(tx)

    def unpublished(self) -> int:
        with self.db.begin() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(bank_outbox_events)
                .where(bank_outbox_events.c.published.is_(False))).scalar_one())

    def published(self, tx: str) -> bool:
        self.seen.extend((r.value or b"").decode() for r in self.consumer.poll(0.0))
        return any(tx in value for value in self.seen)

    def beats(self, count: int) -> None:
        start = self.publisher.cycles
        wait_for(lambda: self.publisher.cycles >= start + count, timeout=30,
                 interval=BEAT, message=f"{count} beats")


@pytest.fixture
def outbox() -> Iterator[_Outbox]:
    made = _Outbox()
    made.publisher.start()
    try:
        yield made
    finally:
        made.publisher.stop(10)
        made.db.dispose()


def test_idle_beats_read_nothing_and_a_new_row_still_goes_out_on_the_next(
    outbox: _Outbox,
) -> None:
    first = outbox.add()
    wait_for(lambda: outbox.published(first), message="the first row published")
    outbox.beats(2)  # the beat that published it has finished
    reads = outbox.reads
    outbox.beats(20)
    assert outbox.reads == reads, "an idle beat read the outbox"
    assert outbox.publisher.queries_skipped >= 20
    second = outbox.add()
    wait_for(lambda: outbox.published(second), message="a row written after idle beats")


def test_rows_a_failed_beat_left_are_sent_when_the_bus_is_back_without_a_new_commit(
    outbox: _Outbox,
) -> None:
    outbox.bus.set_available(False)  # the bus's own fault: every operation fails
    tx = outbox.add()
    outbox.beats(5)
    assert outbox.unpublished() == 1
    reads = outbox.reads
    outbox.bus.set_available(True)  # nothing committed since the failures
    wait_for(lambda: outbox.published(tx), message="the row sent once the bus is back")
    assert outbox.reads > reads
    assert outbox.unpublished() == 0
