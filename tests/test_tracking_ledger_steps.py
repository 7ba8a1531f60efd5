"""The ledger's step rows (issue 12): a payment written once, each step appended as a
narrow row of ``twin_payment_steps``, and every reader seeing the same payment as
when the whole row was rewritten per change; older ledgers with the steps in wide
columns upgraded on open. Each test runs on SQLite and PostgreSQL (``ledger_url``)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from bgmock_twin import metrics
from bgmock_twin.contract import Status
from bgmock_twin.tracking.ledger import Ledger, PaymentQuery, payment_from_row, payment_row
from bgmock_twin.tracking.ledger.schema import (
    payment_steps,
    upgrades,
)
from bgmock_twin.tracking.lifecycle import Channel, Payment, Step, observe_step
from bgmock_twin.tracking.records import record_of
from tests.support.ledgers import running_ledger, write_old_ledger
from tests.test_tracking_ledger import NOW, make_payment


def _walk(book: Ledger, p: Payment, steps: list[Step], start: float = 0.1) -> None:
    """Observe ``steps`` one after the other, writing each change as the tracker does."""
    for i, step in enumerate(steps):
        status = Status.SUCCESS if step in (Step.COMPLETED, Step.SETTLED) else None
        observe_step(p, step, p.intended_mono + start * (i + 1),
                     NOW + timedelta(seconds=start * (i + 1)), status)
        book.write_change(p, step, NOW + timedelta(seconds=start * (i + 1)))


def _step_rows(book: Ledger) -> list[tuple[str, str]]:
    with book.engine.connect() as conn:
        return sorted((str(r.payment_id), str(r.step)) for r in conn.execute(
            sa.select(payment_steps.c.payment_id, payment_steps.c.step)))


def test_each_step_is_one_appended_row_and_readers_see_the_whole_payment(
    ledger_url: str,
) -> None:
    with running_ledger(ledger_url, flush_interval=0.02) as book:
        rest, kafka = make_payment(0, sim="sim-s"), make_payment(1, sim="sim-s",
                                                                  channel=Channel.KAFKA)
        book.write_payment(rest, NOW)
        book.write_payment(kafka, NOW)
        assert book.flush(5)
        _walk(book, rest, [Step.ACCEPTED, Step.INITIATED, Step.FORWARDED])
        _walk(book, kafka, [Step.INITIATED, Step.FORWARDED, Step.PROCESSED, Step.COMPLETED])
        assert book.flush(5)
        assert book.get(rest.payment_id) == record_of(rest)
        assert book.get(str(kafka.transaction_id)) == record_of(kafka)
        assert _step_rows(book) == sorted(
            [(rest.payment_id, s) for s in ("accepted", "initiated", "forwarded")]
            + [(kafka.payment_id, s) for s in ("initiated", "forwarded", "processed",
                                               "completed")])
        # a restart rebuilds the payment in flight with its steps
        (row,) = book.load_unfinished("test")
        again = payment_from_row(row, rest.intended_mono, rest.intended_at)
        assert again.steps == rest.steps and again.state == "forwarded"
        assert [r.payment_id for r in book.query(PaymentQuery(status="success"))] == \
            [kafka.payment_id]
        chunks = list(book.query_chunks(PaymentQuery(simulation_id="sim-s", limit=None), 1))
        assert [r for chunk in chunks for r in chunk] == [record_of(kafka), record_of(rest)]
        _walk(book, rest, [Step.PROCESSED, Step.COMPLETED, Step.SETTLED], start=0.5)
        assert book.flush(5)
        durations = book.durations("sim-s")
        assert sorted(durations["total"]) == sorted(
            [rest.steps[Step.SETTLED].since_intended, kafka.steps[Step.COMPLETED].since_intended])
        assert len(durations["forwarded"]) == 2 and len(durations["accepted"]) == 1
        assert book.get(rest.payment_id) == record_of(rest)
        assert book.prune(timedelta(days=0), 0, NOW + timedelta(days=1)) == 2
        assert _step_rows(book) == []  # pruned with their payments


def test_progress_joins_a_waiting_row_and_a_dropped_change_is_written_whole_next(
    tmp_path: Path,
) -> None:
    """No writer running: progress joins the payment's pending whole row (one buffered
    row per payment); past the bound a change is dropped and counted, and the next
    write of that payment is its whole row, so nothing is missing once stored."""
    book = Ledger(f"sqlite:///{tmp_path}/ledger.db", buffer_size=2, flush_interval=0.02)
    assert book.open()
    try:
        first, second, third = (make_payment(i) for i in range(3))
        book.write_payment(first, NOW)
        _walk(book, first, [Step.ACCEPTED, Step.INITIATED])
        assert book.buffered == 1
        book.write_payment(second, NOW)
        dropped = metrics.LEDGER_DROPPED._value.get()
        book.write_payment(third, NOW)  # no room
        _walk(book, third, [Step.ACCEPTED])  # no room either
        assert metrics.LEDGER_DROPPED._value.get() - dropped == 2
        book.start()
        assert book.flush(5)
        _walk(book, third, [Step.INITIATED], start=0.3)  # written whole
        assert book.flush(5)
        for p in (first, second, third):
            assert book.get(p.payment_id) == record_of(p)
    finally:
        book.stop(2)
        book.close()



def test_an_old_ledger_keeps_its_steps(ledger_url: str) -> None:
    done, open_ = make_payment(0, sim="old"), make_payment(1, sim="old")
    for step in (Step.ACCEPTED, Step.INITIATED, Step.FORWARDED, Step.PROCESSED,
                 Step.COMPLETED, Step.SETTLED):
        observe_step(done, step, done.intended_mono + 0.25 * len(done.steps) + 0.25,
                     NOW + timedelta(seconds=len(done.steps)), Status.SUCCESS)
    observe_step(open_, Step.ACCEPTED, open_.intended_mono + 0.5, NOW)
    write_old_ledger(ledger_url, [payment_row(done, NOW), payment_row(open_, NOW)])

    with running_ledger(ledger_url, flush_interval=0.02) as book:
        assert book.get(done.payment_id) == record_of(done)
        assert book.get(open_.payment_id) == record_of(open_)
        assert book.durations("old")["total"] == [done.steps[Step.SETTLED].since_intended]
        (row,) = book.load_unfinished("test")
        assert payment_from_row(row, 0.0, NOW).steps == open_.steps
        observe_step(open_, Step.INITIATED, open_.intended_mono + 1.0, NOW)
        book.write_change(open_, Step.INITIATED, NOW)
        assert book.flush(5)
        assert book.get(open_.payment_id) == record_of(open_)
    with running_ledger(ledger_url) as book:  # the copy is made once
        assert len(_step_rows(book)) == 8
        with book.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(upgrades)).scalar() == 1
        assert book.get(done.payment_id) == record_of(done)


def test_the_tracker_writes_narrow_steps_and_full_changes_that_read_back_whole(
    ledger_url: str,
) -> None:
    """Through the tracker: the 202's id (set before its step), steps that only move
    the furthest step (narrow updates), a FAILED completion with its message and the
    settled status all reach the ledger; the row reads back as the tracker has it."""
    from bgmock_twin.bus.base import Record
    from bgmock_twin.contract import (
        TOPIC_COMPLETED,
        TOPIC_FORWARDED,
        TOPIC_INITIATED,
        TOPIC_PROCESSED,
        IncomingTransactionEvent,
        OutgoingTransactionEvent,
        TransactionResponseEvent,
    )
    from bgmock_twin.tracking.tracker import Tracker

    with running_ledger(ledger_url, flush_interval=0.02) as book:
        tracker = Tracker(book, step_deadline=10, sla=30)
        p = make_payment(0)
        p.transaction_id = None
        tracker.register(p)
        tx = uuid.uuid4()
        tracker.accepted(p.payment_id, tx)
        assert book.flush(5)
        stored = book.get(str(tx))
        assert stored is not None and stored.state == "accepted"
        amount = p.amount
        events = [
            (TOPIC_INITIATED, OutgoingTransactionEvent(tx, "02", "TWIN-B-002", "TWIN-BG-A-001",
                                                       amount, Status.PENDING)),
            (TOPIC_FORWARDED, IncomingTransactionEvent(tx, "01", "TWIN-A-001", amount,
                                                       Status.PENDING)),
        ]
        tracker.on_events([(Record(t, 0, i, b"k", b"{}"), e) for i, (t, e) in enumerate(events)])
        assert book.flush(5)
        assert book.get(p.payment_id) == record_of(tracker.get(p.payment_id))  # type: ignore[arg-type]
        tracker.on_events([
            (Record(TOPIC_PROCESSED, 0, 2, b"k", b"{}"),
             TransactionResponseEvent(tx, Status.FAILED, "no such account")),
            (Record(TOPIC_COMPLETED, 0, 3, b"k", b"{}"),
             TransactionResponseEvent(tx, Status.FAILED, "no such account")),
        ])
        tracker.settle(p.payment_id, Status.FAILED)
        assert book.flush(5)
        followed = tracker.get(p.payment_id)
        assert followed is not None and followed.outcome is not None
        stored = book.get(p.payment_id)
        assert stored == record_of(followed)
        assert stored.message == "no such account" and stored.final_status is Status.FAILED
        assert stored.transaction_id == str(tx) and stored.state == "settled"


def test_progress_left_unwritten_at_stop_is_spilled_and_restored(tmp_path: Path) -> None:
    """Changes still buffered when the twin stops (here: no writer ran) go to the
    spill file as state and step lines and are stored at the next open."""
    url = f"sqlite:///{tmp_path}/ledger.db"
    narrow, full = make_payment(0), make_payment(1)
    with running_ledger(url) as book:
        book.write_payment(narrow, NOW)
        book.write_payment(full, NOW)
    book = Ledger(url)
    assert book.open()
    _walk(book, narrow, [Step.ACCEPTED, Step.INITIATED])
    observe_step(narrow, Step.FORWARDED, narrow.intended_mono + 0.5, NOW)
    book.write_change(narrow, Step.FORWARDED, NOW, narrow=True)
    _walk(book, full, [Step.ACCEPTED])
    book.stop(0.5)
    book.close()
    assert list(tmp_path.glob("*.jsonl"))
    with running_ledger(url) as again:
        assert again.get(narrow.payment_id) == record_of(narrow)
        assert again.get(full.payment_id) == record_of(full)
    assert not list(tmp_path.glob("*.jsonl"))
