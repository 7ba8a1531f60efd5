"""The reconciler on real PostgreSQL databases in the contract layout and a real
ledger: a consistent world is all ok; a slow or dead database makes exactly the
checks that need it "unknown" (never a violation) within the run's budget."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from bgmock_twin.api.books_routes import reconciliation_body
from bgmock_twin.books import checks as c
from bgmock_twin.books.checks import CheckStatus
from bgmock_twin.books.model import AccountKey
from bgmock_twin.books.reconcile import ReconcileConfig, Reconciler
from bgmock_twin.books.sources import LedgerReader
from bgmock_twin.clients.databases import readonly_engine
from bgmock_twin.contract import tables as schema
from bgmock_twin.tracking import ledger as ledger_tables
from bgmock_twin.tracking.ledger import Ledger
from tests.support.blackhole import Blackhole
from tests.support.postgres import PostgresServer, writable_engine

D = Decimal
TX = uuid.UUID(int=42)
A1 = AccountKey("bank_a", "TWIN-A-001")
B1 = AccountKey("bank_b", "TWIN-B-001")


@dataclass
class World:
    urls: dict[str, str]
    engines: dict[str, sa.Engine]
    ledger: Ledger


def _naive(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


@pytest.fixture(scope="module")
def databases(postgres: PostgresServer) -> dict[str, str]:
    return {"db_bank_a": postgres.create_database(), "db_bank_b": postgres.create_database(),
            "db_switch": postgres.create_database()}


@pytest.fixture
def world(databases: dict[str, str], tmp_path: Path) -> Iterator[World]:
    """Bank A paid 10 from TWIN-A-001 to TWIN-B-001 at Bank B; every book agrees."""
    urls = databases
    past = _naive(datetime.now(UTC) - timedelta(minutes=2))
    for name in ("db_bank_a", "db_bank_b"):
        engine = writable_engine(urls[name])
        schema.bank_metadata.drop_all(engine)
        schema.bank_metadata.create_all(engine)
        number, balance = ("TWIN-A-001", D("90")) if name == "db_bank_a" else \
            ("TWIN-B-001", D("110"))
        with engine.begin() as conn:
            conn.execute(sa.insert(schema.accounts).values(
                account_id=uuid.uuid4(), account_number=number, balance=balance,
                reserved_balance=D("0")))
            if name == "db_bank_a":
                conn.execute(sa.insert(schema.bank_outgoing_transactions).values(
                    transaction_id=TX, from_clearing_number="01", from_account_number=number,
                    to_bankgood_number="TWIN-BG-B-001", amount=D("10"), status="SUCCESS",
                    created_at=past))
                topic = "transactions.initiated"
            else:
                conn.execute(sa.insert(schema.incoming_transactions).values(
                    transaction_id=TX, to_clearing_number="02", to_account_number=number,
                    amount=D("10"), status="SUCCESS", created_at=past))
                topic = "transactions.processed"
            conn.execute(sa.insert(schema.bank_outbox_events).values(
                transaction_id=TX, topic=topic, message_key="01", payload="{}", published=True,
                created_at=past))
        engine.dispose()
    engine = writable_engine(urls["db_switch"])
    schema.clearing_metadata.drop_all(engine)
    schema.clearing_metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.clearing_outgoing_transactions).values(
            transaction_id=TX, from_clearing_number="01", from_account_number="TWIN-A-001",
            to_bankgood_number="TWIN-BG-B-001", amount=D("10"), status="SUCCESS",
            created_at=past))
    engine.dispose()
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    assert ledger.open()
    ledger.start()
    old = datetime.now(UTC) - timedelta(minutes=2)
    for number, clearing in (("TWIN-A-001", "01"), ("TWIN-B-001", "02")):
        ledger.write("deposit", {"deposit_id": number, "instance_id": "t",
                                 "clearing_number": clearing, "account_number": number,
                                 "amount": D("100"), "reason": "initial", "at": old})
    row: dict[str, object] = {col.name: None for col in ledger_tables.payments.columns}
    row.update({"payment_id": "p1", "transaction_id": str(TX), "instance_id": "t",
                "channel": "rest", "route": "a_to_b", "kind": "normal", "from_clearing": "01",
                "from_account": "TWIN-A-001", "to_bankgood": "TWIN-BG-B-001",
                "to_clearing": "02", "to_account": "TWIN-B-001", "amount": D("10"),
                "intended_at": old, "status": "success", "state": "settled", "finished": True,
                "outcome": "success", "final_status": "SUCCESS", "finished_at": old,
                "updated_at": old, "refusal_ambiguous": False})
    ledger.write("payment", row)
    assert ledger.flush(5)
    engines = {name: readonly_engine(url, 500, connect_timeout_s=1)
               for name, url in urls.items()}
    try:
        yield World(urls, engines, ledger)
    finally:
        for engine in engines.values():
            engine.dispose()
        ledger.stop(2)
        ledger.close()


def _reconciler(world: World, engines: dict[str, sa.Engine] | None = None,
                budget: float = 4.0) -> Reconciler:
    return Reconciler(
        ReconcileConfig(budget_seconds=budget, rest_timeout_seconds=1, statement_timeout_ms=500,
                        sla_seconds=30, outbox_max_pending=100, outbox_max_age_seconds=30,
                        status_lookback=timedelta(hours=1)),
        ledger=LedgerReader(world.ledger.engine, ledger_tables.payments,
                            ledger_tables.deposits, flush=world.ledger.flush),
        clients=None,
        engines=engines if engines is not None else world.engines,
        twin_accounts=lambda: [A1, B1],
    )


def test_consistent_books_are_all_ok(world: World) -> None:
    reconciler = _reconciler(world)
    try:
        report = reconciler.run()
    finally:
        reconciler.close()
    statuses = {name: r.status for name, r in report.results.items()}
    assert statuses == {name: CheckStatus.OK for name in c.CHECKS}, report
    body = reconciliation_body(report, 30).model_dump(mode="json")
    assert body["status"] == "ok" and body["violations"] == 0
    assert body["checks"]["status_agreement"]["detail"] == {"paymentsChecked": 1}
    assert body["checks"]["balance_drift"]["detail"]["drift"] == {"bank_a": "0", "bank_b": "0"}
    assert body["sources"]["db_bank_a_books"] == "ok"  # balances with the journal


def test_a_slow_database_is_unknown_and_bounded(world: World) -> None:
    """Bank B's tables are locked: its reads hit the statement timeout. Bank B's
    checks are unknown, nothing is reported violated, the run ends in its budget."""
    locker = writable_engine(world.urls["db_bank_b"])
    release = threading.Event()
    locked = threading.Event()

    def hold_lock() -> None:
        with locker.connect() as conn:
            conn.execute(sa.text("BEGIN"))
            conn.execute(sa.text("LOCK TABLE accounts, outgoing_transactions, "
                                 "incoming_transactions, outbox_events IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(20)
            conn.execute(sa.text("ROLLBACK"))

    holder = threading.Thread(target=hold_lock)
    holder.start()
    reconciler = _reconciler(world)
    try:
        assert locked.wait(10)
        started = time.monotonic()
        report = reconciler.run()
        elapsed = time.monotonic() - started
    finally:
        release.set()
        holder.join(10)
        locker.dispose()
        reconciler.close()
    assert elapsed < 4.0 + 1.0
    results = report.results
    assert all(r.status is not CheckStatus.VIOLATED for r in results.values()), report
    for name in (c.CONSERVATION, c.STATUS_AGREEMENT, c.OUTBOX_BACKLOG, c.OUTBOX_INTEGRITY,
                 c.STALE_PENDING, c.RESERVED_MATCHES_PENDING, c.BALANCE_DRIFT):
        assert results[name].status is CheckStatus.UNKNOWN, name
    # what could be read was checked: Bank A's drift figure is there, Bank B's is not
    assert results[c.BALANCE_DRIFT].detail["drift"] == {"bank_a": "0"}
    assert "statement timeout" in report.sources["db_bank_b"]
    assert report.sources["db_bank_a"] == "ok"


def test_a_dead_or_hung_database_is_unknown(world: World) -> None:
    hole = Blackhole()
    dead = readonly_engine("postgresql://x@127.0.0.1:1/none", 500, connect_timeout_s=1)
    hung = readonly_engine(f"postgresql://x@127.0.0.1:{hole.port}/none", 500,
                           connect_timeout_s=1)
    engines = {**world.engines, "db_switch": dead, "db_bank_a": hung}
    reconciler = _reconciler(world, engines, budget=3.0)
    try:
        started = time.monotonic()
        report = reconciler.run()
        assert time.monotonic() - started < 3.0 + 1.0
        # the hung read is still running: the next run does not pile another on it
        second = reconciler.run()
    finally:
        reconciler.close()
        dead.dispose()
        hung.dispose()
        hole.close()
    for r in (report, second):
        assert all(x.status is not CheckStatus.VIOLATED for x in r.results.values())
        assert r.results[c.OUTBOX_BACKLOG].status is CheckStatus.UNKNOWN
        assert r.results[c.STATUS_AGREEMENT].status is CheckStatus.UNKNOWN
    assert report.sources["db_switch"].startswith("error")
    assert report.sources["db_bank_a"] in ("timeout",) or \
        report.sources["db_bank_a"].startswith("error")
    assert report.results[c.OUTBOX_BACKLOG].detail["services"] == {
        "bank_b": {"unpublished": 0, "oldest_age_seconds": 0.0}}


def _violated(report_results: dict[str, c.CheckResult]) -> set[str]:
    return {name for name, r in report_results.items() if r.status is CheckStatus.VIOLATED}


def test_each_corruption_is_found_by_its_check(world: World) -> None:
    reconciler = _reconciler(world)
    try:
        writer = writable_engine(world.urls["db_bank_a"])
        with writer.begin() as conn:  # money moved behind the twin's back
            conn.execute(sa.update(schema.accounts).values(balance=D("95.50")))
        report = reconciler.run()
        assert _violated(report.results) == {c.BALANCE_DRIFT, c.CONSERVATION}
        (drift,) = report.results[c.BALANCE_DRIFT].violations
        assert drift.evidence["account"] == "TWIN-A-001"
        assert drift.evidence["actual"] == "95.50" and drift.evidence["drift"] == "5.50"
        assert report.results[c.BALANCE_DRIFT].detail["drift"] == {"bank_a": "5.50",
                                                                     "bank_b": "0"}
        with writer.begin() as conn:
            conn.execute(sa.update(schema.accounts).values(balance=D("90")))
        writer.dispose()

        clearing = writable_engine(world.urls["db_switch"])
        with clearing.begin() as conn:  # the clearing remembers it differently
            conn.execute(sa.update(schema.clearing_outgoing_transactions)
                         .values(status="FAILED"))
            conn.execute(sa.insert(schema.clearing_outgoing_transactions).values(
                transaction_id=uuid.uuid4(), from_account_number="SOMEONE", amount=D("1"),
                status="PENDING", created_at=_naive(datetime.now(UTC) - timedelta(minutes=5))))
        clearing.dispose()
        # each finished payment is compared once (and again while it disagrees):
        # a fresh reconciler compares this one again
        reconciler.close()
        reconciler = _reconciler(world)
        report = reconciler.run()
        assert _violated(report.results) == {c.STATUS_AGREEMENT, c.STALE_PENDING,
                                             c.OUTBOX_INTEGRITY}
        (disagreement,) = report.results[c.STATUS_AGREEMENT].violations
        assert disagreement.evidence["statuses"] == {
            "bank_a:outgoing": "SUCCESS", "clearing": "FAILED", "bank_b:incoming": "SUCCESS"}
        (stale,) = report.results[c.STALE_PENDING].violations
        assert stale.evidence["service"] == "clearing" and stale.evidence["account"] == "SOMEONE"
        # the disagreeing payment is looked at again on the next run, not forgotten
        again = reconciler.run()
        assert again.results[c.STATUS_AGREEMENT].status is CheckStatus.VIOLATED
    finally:
        reconciler.close()


def test_a_drift_that_disappears_on_the_second_look_is_not_reported(world: World) -> None:
    """A deposit the bank applied but the ledger records a moment later is no drift."""
    writer = writable_engine(world.urls["db_bank_b"])
    with writer.begin() as conn:
        conn.execute(sa.update(schema.accounts).values(balance=D("160")))
    writer.dispose()

    def record_late() -> None:
        time.sleep(0.3)
        world.ledger.write("deposit", {
            "deposit_id": "late", "instance_id": "t", "clearing_number": "02",
            "account_number": "TWIN-B-001", "amount": D("50"), "reason": "top_up",
            "at": datetime.now(UTC)})

    recorder = threading.Thread(target=record_late)
    reconciler = _reconciler(world)
    try:
        recorder.start()
        report = reconciler.run()
    finally:
        recorder.join()
        reconciler.close()
    assert _violated(report.results) == set(), report
    assert report.results[c.BALANCE_DRIFT].detail["drift"] == {"bank_a": "0", "bank_b": "0"}


def test_journal_views_pin_payments_only_where_the_journal_proves_it() -> None:
    from bgmock_twin.books.journal import with_views
    from bgmock_twin.books.model import DestinationView, PaymentFact, Progress, SourceView
    from bgmock_twin.books.sources import PaymentMeta
    from bgmock_twin.books.sql import BankBooks, JournalRow
    from bgmock_twin.contract import Channel

    now = datetime.now(UTC)
    since = now - timedelta(minutes=4)
    known, idless, old = uuid.UUID(int=1), None, uuid.UUID(int=3)

    def fact(pid: str) -> PaymentFact:
        return PaymentFact(pid, Channel.REST, A1, B1, D("5"), Progress.SUBMITTED)

    meta = {"known": PaymentMeta(known, now), "idless": PaymentMeta(idless, now),
            "old": PaymentMeta(old, now - timedelta(minutes=10))}

    def books(out: dict[uuid.UUID, JournalRow], inc: dict[uuid.UUID, JournalRow],
              complete: bool = True) -> dict[str, BankBooks]:
        naive = _naive(since)
        return {"bank_a": BankBooks("bank_a", {}, out, {}, naive, complete),
                "bank_b": BankBooks("bank_b", {}, {}, inc, naive, complete)}

    def views(b: dict[str, BankBooks],
              absent: dict[str, datetime] | None = None) -> dict[str, tuple[object, object]]:
        absent = {"bank_a": since, "bank_b": since} if absent is None else absent
        return {p.payment_id: (p.source_view, p.destination_view)
                for p in with_views([fact("known"), fact("idless"), fact("old")], meta, b,
                                    absent)}

    clean = views(books({known: ("PENDING", A1.number, None)}, {}))
    assert clean == {"known": (SourceView.PENDING, DestinationView.NOT_CREDITED),
                     "idless": (SourceView.ABSENT, DestinationView.NOT_CREDITED),
                     "old": (None, None)}
    # a row the ledger cannot explain may be the id-less payment's: no claim there
    stray = uuid.UUID(int=99)
    unexplained = views(books({known: ("SUCCESS", A1.number, None),
                               stray: ("PENDING", A1.number, None)},
                              {known: ("SUCCESS", B1.number, None)}))
    assert unexplained["idless"] == (None, DestinationView.NOT_CREDITED)
    assert unexplained["known"] == (SourceView.SUCCESS, DestinationView.CREDITED)
    # an incomplete journal proves nothing by absence
    partial = views(books({}, {}, complete=False))
    assert partial == {"known": (None, None), "idless": (None, None), "old": (None, None)}
    # a bank whose clock is not known yet proves nothing by absence either
    unknown_clock = views(books({}, {}), {"bank_b": since})
    assert unknown_clock["known"] == (None, DestinationView.NOT_CREDITED)


def test_clock_offset_is_the_smallest_delay() -> None:
    from bgmock_twin.books.journal import clock_offset

    sent = datetime(2025, 11, 20, 10, 0, tzinfo=UTC)
    local = datetime(2025, 11, 20, 5, 0)  # a service writing UTC-5 local time
    assert clock_offset([(local + timedelta(seconds=3), sent),
                         (local + timedelta(seconds=1), sent)]) == timedelta(hours=-5, seconds=1)
    assert clock_offset([]) is None


def test_a_bank_on_local_time_is_measured_on_its_own_clock(world: World) -> None:
    """Bank B writes its timestamps in UTC-5 (LocalDateTime on a server not in UTC).
    Its fresh outbox row and PENDING payment are not five hours old: no violation."""
    writer = writable_engine(world.urls["db_bank_b"])
    shift = timedelta(hours=-5)
    local_now = _naive(datetime.now(UTC)) + shift
    with writer.begin() as conn:
        for table in (schema.incoming_transactions, schema.bank_outbox_events):
            conn.execute(sa.update(table).values(created_at=table.c.created_at + shift))
        conn.execute(sa.insert(schema.incoming_transactions).values(
            transaction_id=uuid.uuid4(), to_account_number="SOMEONE", amount=D("1"),
            status="PENDING", created_at=local_now - timedelta(seconds=5)))
        conn.execute(sa.insert(schema.bank_outbox_events).values(
            transaction_id=uuid.uuid4(), topic="transactions.processed", message_key="02",
            payload="{}", published=False, created_at=local_now - timedelta(seconds=5)))
    writer.dispose()
    reconciler = _reconciler(world)
    try:
        report = reconciler.run()
    finally:
        reconciler.close()
    assert _violated(report.results) == set(), report
    offset = report.clock_offsets["bank_b"]
    assert abs(offset - shift) < timedelta(minutes=3)  # the payment's row, minutes after
    backlog = report.results[c.OUTBOX_BACKLOG].detail["services"]["bank_b"]
    assert backlog["unpublished"] == 1 and backlog["oldest_age_seconds"] < 200
