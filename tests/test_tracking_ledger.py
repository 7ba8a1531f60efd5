"""The ledger on SQLite and on a real PostgreSQL: round trips, buffering through an
outage, the durable sequence, queries and retention."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from bgmock_twin import metrics
from bgmock_twin.books.model import Progress
from bgmock_twin.books.sources import LedgerReader
from bgmock_twin.contract import Status
from bgmock_twin.tracking.ledger import (
    Ledger,
    PaymentQuery,
    bulk,
    deposits,
    payment_from_row,
    payment_row,
    payments,
)
from bgmock_twin.tracking.ledger.bulk import SQLITE_MAX_PARAMETERS, MultiRow, store_rows
from bgmock_twin.tracking.ledger.rows import state_of, step_of
from bgmock_twin.tracking.lifecycle import (
    Channel,
    Kind,
    Outcome,
    Payment,
    Route,
    Step,
    check_deadline,
    observe_step,
    reject,
)
from bgmock_twin.tracking.records import record_of
from tests.support.ledgers import running_ledger, write_old_ledger
from tests.support.ports import wait_for

NOW = datetime(2025, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with running_ledger(ledger_url, buffer_size=1000, flush_interval=0.02) as book:
        yield book


def make_payment(i: int = 0, sim: str | None = None, channel: Channel = Channel.REST,
                 intended_at: datetime = NOW) -> Payment:
    return Payment(
        payment_id=str(uuid.uuid4()), channel=channel, route=Route.B_TO_A, kind=Kind.NORMAL,
        from_clearing="02", from_account="TWIN-B-002", to_bankgood="TWIN-BG-A-001",
        to_clearing="01", to_account="TWIN-A-001", amount=Decimal("12345678901.23") + i,
        intended_at=intended_at + timedelta(seconds=i), intended_mono=1000.0 + i,
        simulation_id=sim, instance_id="test", transaction_id=uuid.uuid4(),
    )


def test_a_payment_round_trips_with_exact_money_and_utc_times(ledger: Ledger) -> None:
    p = make_payment(sim="sim-1")
    observe_step(p, Step.ACCEPTED, 1000.2, NOW + timedelta(seconds=0.2))
    observe_step(p, Step.COMPLETED, 1002.0, NOW + timedelta(seconds=2), Status.FAILED, "no map")
    ledger.write_payment(p, NOW)
    assert ledger.flush(5)
    record = ledger.get(str(p.transaction_id))
    assert record is not None and record.payment_id == p.payment_id
    assert record.amount == Decimal("12345678901.23") and isinstance(record.amount, Decimal)
    assert record.intended_at == NOW and record.intended_at.tzinfo is not None
    accepted, completed = record.step(Step.ACCEPTED), record.step(Step.COMPLETED)
    assert accepted is not None and accepted.at == NOW + timedelta(seconds=0.2)
    assert completed is not None and completed.since_intended == pytest.approx(2.0)
    assert record.status == "in_flight" and record.state == "completed"
    assert record == record_of(p)  # the same record, stored or live
    [row] = ledger.load_unfinished("test")
    back = payment_from_row(row, now_mono=5000.0, now_utc=NOW + timedelta(seconds=10))
    assert back.intended_mono == pytest.approx(4990.0)  # re-anchored through the wall clock
    assert back.steps.keys() == p.steps.keys() and back.final_status is Status.FAILED
    assert back.transaction_id == p.transaction_id and back.message == "no map"


# Text the PostgreSQL writer must quote inside its array literals (``bulk.pg_text``),
# and text that looks like an array literal's own NULL, empty or separator.
AWKWARD_TEXT = ['say "hi", {x} \\ back\\slash\\', "NULL", "", "new\nline\ttab",
                " spaced, comma ", "\u00fcn\u00efc\u00f8d\u00e9 \u20ac", "}{,\"\\"]


@pytest.mark.parametrize("text", AWKWARD_TEXT)
def test_awkward_text_round_trips_through_every_write(ledger: Ledger, text: str) -> None:
    p = make_payment(sim="sim-1")
    p.from_account = text
    ledger.write_payment(p, NOW)
    assert ledger.flush(5)
    observe_step(p, Step.ACCEPTED, 1000.2, NOW + timedelta(seconds=0.2))
    ledger.write_change(p, Step.ACCEPTED, NOW, narrow=True)
    observe_step(p, Step.COMPLETED, 1002.0, NOW + timedelta(seconds=2), Status.FAILED, text)
    ledger.write_change(p, Step.COMPLETED, NOW)
    assert ledger.flush(5)
    record = ledger.get(p.payment_id)
    assert record is not None
    assert record.from_account == text
    assert record.message == p.message == (text or None)  # the lifecycle keeps no empty one
    assert record.state == "completed" and record.final_status is Status.FAILED
    assert [s.step for s in record.timeline] == [Step.ACCEPTED, Step.COMPLETED]
    assert record == record_of(p)


@pytest.mark.parametrize("update_from", [True, False], ids=["update-from", "row-by-row"])
def test_a_batch_of_any_size_is_stored_whole(ledger: Ledger, update_from: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """One batch goes as pages (power-of-two multi-row statements on SQLite, a
    thousand rows on PostgreSQL): every row of an odd-sized batch is stored, and each
    update and step lands on its own payment; on an SQLite older than 3.33 (no
    ``UPDATE ... FROM``) the updates go row by row."""
    monkeypatch.setattr(bulk, "SQLITE_UPDATE_FROM", update_from)
    made = [make_payment(i) for i in range(777)]
    with ledger.engine.begin() as conn:
        store_rows(conn, [("payment", payment_row(p, NOW)) for p in made])
    progress = []
    for n, p in enumerate(made):
        observe_step(p, Step.ACCEPTED, p.intended_mono + 0.2, p.intended_at)
        if n % 2:  # a narrow update: only the furthest step moved
            step = step_of(p, Step.ACCEPTED)
            full, tx = None, False
        else:  # a full one, with a new transaction id
            p.transaction_id = uuid.uuid4()
            observe_step(p, Step.COMPLETED, p.intended_mono + 1.0, p.intended_at,
                         Status.SUCCESS)
            step = step_of(p, Step.COMPLETED)
            full, tx = state_of(p, NOW), True
        progress.append(("progress", {
            "payment_id": p.payment_id, "intended_at": p.intended_at, "full": full,
            "tx": tx, "state": p.state, "updated_at": NOW, "steps": [step]}))
    with ledger.engine.begin() as conn:
        store_rows(conn, progress)
    stored = {r.payment_id: r for r in ledger.query(PaymentQuery(limit=10_000))}
    assert len(stored) == len(made)
    for n, p in enumerate(made):
        record = stored[p.payment_id]
        assert record.transaction_id == str(p.transaction_id), n
        assert record.state == p.state, n
        assert record.amount == p.amount, n
        assert [s.step for s in record.timeline][-1] is \
            (Step.ACCEPTED if n % 2 else Step.COMPLETED), n


def test_multi_row_pages_are_powers_of_two_within_the_parameter_limit() -> None:
    wide = MultiRow("INSERT", width=45)
    assert wide.page_sizes(777) == [512, 256, 8, 1]
    assert wide.page_sizes(0) == []
    assert sum(wide.page_sizes(5000)) == 5000
    assert max(MultiRow("INSERT", width=100).page_sizes(1000)) * 100 <= SQLITE_MAX_PARAMETERS
    assert wide.text(2).count("?") == 90


def test_whole_rows_are_stored_before_the_progress_of_their_batch(
        ledger_url: str, tmp_path: Path) -> None:
    """The sender waits for a payment's whole row only (``rows_durable_seq``): a
    batch commits its whole rows first, so a progress row the database refuses
    (a step without its time) holds back ``durable_seq`` but not them. Stopped, the
    ledger keeps the refused row in its spill file."""
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    first, second = make_payment(1), make_payment(2)
    with running_ledger(ledger_url, buffer_size=1000, flush_interval=0.02,
                        spill_dir=spill_dir) as ledger:
        ledger.write_payment(first, NOW)
        assert ledger.flush(5)
        ledger.write_progress(first.payment_id, first.intended_at, None, "accepted", NOW,
                              ("accepted", None, 0.2, 0.2))  # type: ignore[arg-type]
        seq = ledger.write_payment(second, NOW)
        wait_for(lambda: ledger.rows_durable_seq >= seq, timeout=10,
                 message="the whole row stored")
        assert ledger.get(second.payment_id) is not None
        assert ledger.durable_seq < seq
        assert not ledger.flush(0.3)
    [spilled] = spill_dir.glob("*.jsonl")
    assert first.payment_id in spilled.read_text()


def test_newer_snapshots_replace_older_ones_and_unfinished_ones_reload(ledger: Ledger) -> None:
    done, open_ = make_payment(1), make_payment(2)
    ledger.write_payment(done, NOW)
    ledger.write_payment(open_, NOW)
    observe_step(done, Step.SETTLED, 1003.0, NOW, Status.SUCCESS)
    assert done.outcome is Outcome.SUCCESS
    ledger.write_payment(done, NOW)
    assert ledger.flush(5)
    unfinished = ledger.load_unfinished("test")
    assert [r["payment_id"] for r in unfinished] == [open_.payment_id]
    assert ledger.load_unfinished("another-replica") == []
    recent = ledger.load_recent_finished("test", NOW - timedelta(hours=1))
    assert [r["payment_id"] for r in recent] == [done.payment_id]
    assert ledger.durable_seq == ledger.last_seq


def test_a_restart_reads_its_payments_back_in_chunks_none_lost_or_repeated(
        ledger: Ledger) -> None:
    """The resume reads a chunk at a time, each read taken up after the last row of
    the one before: payments sharing an intended send time across a chunk's edge are
    neither skipped nor read twice, and steps come with each chunk's rows."""
    open_ = [make_payment(i // 3) for i in range(10)]  # three at each send time
    finished = [make_payment(i // 4) for i in range(9)]
    for p in open_ + finished:
        observe_step(p, Step.ACCEPTED, p.intended_mono + 0.1, p.intended_at)
    for p in finished:
        observe_step(p, Step.SETTLED, p.intended_mono + 1.0, p.intended_at, Status.SUCCESS)
    for p in open_ + finished:
        ledger.write_payment(p, NOW)
    assert ledger.flush(5)

    chunks = list(ledger.unfinished_chunks("test", chunk_size=4))
    assert [len(c) for c in chunks] == [4, 4, 2]
    rows = [row for chunk in chunks for row in chunk]
    assert sorted(r["payment_id"] for r in rows) == sorted(p.payment_id for p in open_)
    assert [r["intended_at"] for r in rows] == sorted(p.intended_at for p in open_)
    assert all(r["accepted_at"] is not None for r in rows)
    assert rows == ledger.load_unfinished("test")  # the same rows as one read
    assert [len(c) for c in ledger.unfinished_chunks("test", limit=7, chunk_size=4)] == [4, 3]

    recent = [row for chunk in ledger.recent_finished_chunks(
        "test", NOW - timedelta(hours=1), chunk_size=2) for row in chunk]
    assert sorted(r["payment_id"] for r in recent) == sorted(p.payment_id for p in finished)
    assert [r["intended_at"] for r in recent] == sorted(
        (p.intended_at for p in finished), reverse=True)  # newest first
    assert list(ledger.unfinished_chunks("another-replica")) == []


def test_queries_filter_page_and_count(ledger: Ledger) -> None:
    sim = str(uuid.uuid4())
    batch = [make_payment(i, sim=sim if i % 2 else None) for i in range(10)]
    for p in batch[:3]:
        observe_step(p, Step.SETTLED, p.intended_mono + 1, NOW, Status.SUCCESS)
    check_deadline(batch[5], batch[5].intended_mono + 100, 10, 30)  # counted stuck
    for p in batch:
        ledger.write_payment(p, NOW)
    assert ledger.flush(5)
    assert ledger.count_by_status() == {"success": 3, "stuck": 1, "in_flight": 6}
    assert len(ledger.query(PaymentQuery(simulation_id=sim))) == 5
    page1 = ledger.query(PaymentQuery(limit=4))
    page2 = ledger.query(PaymentQuery(limit=4, offset=4))
    assert [r.payment_id for r in page1] == [p.payment_id for p in reversed(batch)][:4]
    assert not {r.payment_id for r in page1} & {r.payment_id for r in page2}
    since = ledger.query(PaymentQuery(since=NOW + timedelta(seconds=7)))
    assert len(since) == 3
    assert [r.payment_id for r in ledger.query(PaymentQuery(status="stuck"))] == \
        [batch[5].payment_id]
    assert ledger.count_by_counted_outcome(sim) == {"success": 1, "stuck": 1, "uncounted": 3}
    durations = ledger.durations(sim)
    assert durations["total"] == [pytest.approx(1.0)]


def test_retention_by_age_and_by_count_keeps_unfinished_payments(ledger: Ledger) -> None:
    """Age and count both prune only finished payments; unfinished ones stay whatever
    their age or number (they may still move money), and deposits are all kept."""
    written = NOW - timedelta(hours=1)

    def settle(p: Payment) -> Payment:
        observe_step(p, Step.SETTLED, p.intended_mono + 1, written, Status.FAILED)
        return p

    old = [settle(make_payment(i, intended_at=NOW - timedelta(days=10))) for i in range(3)]
    old_open = make_payment(9, intended_at=NOW - timedelta(days=10))
    new = [settle(make_payment(i)) for i in range(5)]
    new_open = make_payment(7)
    for p in [*old, old_open, *new, new_open]:
        ledger.write_payment(p, written)
    ledger.write("deposit", {"deposit_id": str(uuid.uuid4()), "instance_id": "test",
                             "clearing_number": "01", "account_number": "TWIN-A-001",
                             "amount": Decimal("1000000.00"), "reason": "initial",
                             "at": NOW - timedelta(days=30)})
    assert ledger.flush(5)
    assert ledger.prune(timedelta(days=7), 1000, NOW) == 3
    assert ledger.prune(timedelta(days=7), 4, NOW) == 3  # 7 rows: the 3 oldest finished
    left = ledger.query(PaymentQuery())
    assert [r.payment_id for r in left] == [new_open.payment_id, new[4].payment_id,
                                               new[3].payment_id, old_open.payment_id]
    assert ledger.prune(timedelta(days=7), 1, NOW) == 2  # never the unfinished ones
    assert {r.payment_id for r in ledger.query(PaymentQuery())} == \
        {old_open.payment_id, new_open.payment_id}
    assert len(ledger.load_deposits()) == 1  # failures moved no money: nothing to carry


def test_writes_survive_an_outage_up_to_the_bound(tmp_path: Path) -> None:
    """A database that is away for a while loses nothing that fits the buffer; beyond
    the bound new rows are dropped and counted, never blocking the caller."""
    missing_dir = tmp_path / "not-yet"
    url = f"sqlite:///{missing_dir / 'ledger.db'}"
    book = Ledger(url, buffer_size=5, flush_interval=0.02)
    assert not book.open()  # the directory does not exist yet: database unavailable
    became_available: list[bool] = []
    book.on_available(lambda: became_available.append(True))
    book.start()
    try:
        dropped_before = metrics.LEDGER_DROPPED._value.get()
        errors_before = metrics.LEDGER_WRITE_ERRORS._value.get()
        batch = [make_payment(i) for i in range(7)]
        seqs = [book.write_payment(p, NOW) for p in batch]
        again = book.write_payment(batch[0], NOW)  # a newer snapshot of a buffered row fits
        assert seqs == sorted(seqs) and again > seqs[-1]
        assert metrics.LEDGER_DROPPED._value.get() - dropped_before == 2
        wait_for(lambda: metrics.LEDGER_WRITE_ERRORS._value.get() > errors_before, timeout=5)
        assert book.durable_seq < seqs[0] and not book.flush(0.2)
        missing_dir.mkdir()
        assert book.flush(10)
        assert became_available == [True]
        assert len(book.query(PaymentQuery(limit=100))) == 5
        assert book.durable_seq == book.last_seq
    finally:
        book.stop(2)
        book.close()


def test_postgres_stores_numeric_and_timestamptz(pg_database: str) -> None:
    book = Ledger(pg_database)
    assert book.open()
    with book.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'twin_payments'")).all()
    types = {str(name): str(kind) for name, kind in rows}
    book.close()
    assert types["amount"] == "numeric"
    assert types["intended_at"] == "timestamp with time zone"


# --- ledgers written before ``refusal_ambiguous`` ---------------------------------------------

def _ambiguity(book: Ledger) -> dict[str, bool]:
    with book.engine.connect() as conn:
        return {pid: bool(flag) for pid, flag in conn.execute(
            sa.select(payments.c.payment_id, payments.c.refusal_ambiguous))}


def test_an_old_ledger_gets_the_ambiguity_of_its_refusals_from_their_messages(
    ledger_url: str,
) -> None:
    """Opening a ledger written before the column existed adds it, fills it once from
    the old text rule, and the books and retention then judge its rows as before."""
    def refused(i: int, message: str, channel: Channel = Channel.REST,
                accepted: bool = False) -> Payment:
        p = make_payment(i, channel=channel, intended_at=NOW - timedelta(days=30))
        if accepted:
            observe_step(p, Step.ACCEPTED, p.intended_mono + 0.1, p.intended_at)
        else:
            p.transaction_id = None
        reject(p, message, p.intended_at)  # as the old code wrote them: no ambiguity
        return p

    timeout = refused(0, "not accepted by bank_a: timeout")
    connection = refused(1, "not accepted by bank_b: connection")
    bad_body = refused(2, "not accepted by bank_a: bad_body")
    not_produced = refused(3, "not produced: broker down", Channel.KAFKA)
    http = refused(4, "not accepted by bank_a: http_400")
    after_202 = refused(5, "rejected by the source bank", accepted=True)
    failed = make_payment(6, channel=Channel.KAFKA, intended_at=NOW - timedelta(days=30))
    observe_step(failed, Step.COMPLETED, failed.intended_mono + 1, NOW, Status.FAILED,
                 "clearing: timeout")  # a failure, not a refusal, whatever its message
    ambiguous = [timeout, connection, bad_body, not_produced]
    certain = [http, after_202, failed]
    written = NOW - timedelta(days=29)
    write_old_ledger(ledger_url, [payment_row(p, written) for p in ambiguous + certain],
                     lacking=frozenset({"refusal_ambiguous"}))

    with running_ledger(ledger_url, flush_interval=0.02) as book:
        assert _ambiguity(book) == {**{p.payment_id: True for p in ambiguous},
                                    **{p.payment_id: False for p in certain}}
        reader = LedgerReader(book.engine, payments, deposits, flush=book.flush)
        facts = reader.snapshot(NOW).payments
        progress = {f.payment_id: f.progress for f in facts}
        assert {progress[p.payment_id] for p in ambiguous} == {Progress.SUBMITTED}
        assert progress[http.payment_id] is Progress.REJECTED
        assert [f.progress for f in facts if f.amount == after_202.amount] == \
            [Progress.REJECTED]  # summed with the other settled rows
        assert book.prune(timedelta(days=7), 1_000_000, NOW) == len(certain)
        assert set(_ambiguity(book)) == {p.payment_id for p in ambiguous}
        # rows written from now on carry their own ambiguity: never filled again
        fresh = refused(7, "not accepted by bank_a: timeout")
        book.write_payment(fresh, NOW)
        assert book.flush(5)

    with running_ledger(ledger_url) as book:  # opening an upgraded ledger changes nothing
        assert _ambiguity(book) == {**{p.payment_id: True for p in ambiguous},
                                    fresh.payment_id: False}
        stored = book.get(fresh.payment_id)
        assert stored is not None and stored.refusal_ambiguous is False
