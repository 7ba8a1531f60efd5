"""Retention keeps the books right, on SQLite and PostgreSQL.

The books derive every expected balance from the ledger (deposits plus the effect of
each payment), so pruning payments must carry their effect forward. Each test
compares the books' own model (``LedgerReader`` + ``expect``, the code the
reconciliation runs) before and after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from bgmock_twin.books import checks as c
from bgmock_twin.books.checks import AccountReading, CheckStatus
from bgmock_twin.books.model import AccountKey, Expectations, expect
from bgmock_twin.books.sources import AMBIGUOUS_REJECTIONS as BOOKS_AMBIGUOUS
from bgmock_twin.books.sources import LedgerReader, bank_of
from bgmock_twin.contract import Status
from bgmock_twin.tracking.ledger import (
    AMBIGUOUS_REJECTIONS,
    CARRY_FORWARD,
    Ledger,
    LedgerUnavailable,
    PaymentQuery,
    deposits,
    payments,
)
from bgmock_twin.tracking.lifecycle import (
    Channel,
    Kind,
    Payment,
    Route,
    Step,
    check_deadline,
    observe_step,
    reject,
)

NOW = datetime(2025, 11, 20, 10, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=30)
RECENT = NOW - timedelta(hours=1)
D = Decimal
A1, A2, B1, B2 = ("01", "TWIN-A-001"), ("01", "TWIN-A-002"), ("02", "TWIN-B-001"), \
    ("02", "TWIN-B-002")
ACCOUNTS = (A1, A2, B1, B2)
READ_ORDER = ("bank_a", "bank_b")


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    book = Ledger(ledger_url, buffer_size=10_000, flush_interval=0.02)
    assert book.open()
    book.start()
    try:
        yield book
    finally:
        book.stop(2)
        book.close()


# --- building realistic rows with the lifecycle rules ----------------------------------------
def payment(src: tuple[str, str], dst: tuple[str, str], amount: str,
            channel: Channel = Channel.REST, intended_at: datetime = OLD) -> Payment:
    return Payment(
        payment_id=str(uuid.uuid4()), channel=channel,
        route=Route.A_TO_B if src[0] == "01" else Route.B_TO_A, kind=Kind.NORMAL,
        from_clearing=src[0], from_account=src[1], to_bankgood=f"BG-{dst[1]}",
        to_clearing=dst[0], to_account=dst[1], amount=D(amount), intended_at=intended_at,
        intended_mono=1000.0, instance_id="test",
        transaction_id=uuid.uuid4(),
    )


def walk(p: Payment, steps: Iterable[Step], status: Status | None = None) -> Payment:
    """Observe ``steps`` in order; the final ones carry ``status``."""
    t = p.intended_mono
    for step in steps:
        t += 0.5
        final = step in (Step.PROCESSED, Step.COMPLETED, Step.SETTLED)
        observe_step(p, step, t, p.intended_at, status if final else None)
    return p


REST_FLOW = (Step.ACCEPTED, Step.INITIATED, Step.FORWARDED, Step.PROCESSED, Step.COMPLETED,
             Step.SETTLED)
KAFKA_FLOW = (Step.INITIATED, Step.FORWARDED, Step.PROCESSED, Step.COMPLETED)


def flow(channel: Channel) -> tuple[Step, ...]:
    return REST_FLOW if channel is Channel.REST else KAFKA_FLOW


def succeed(p: Payment) -> Payment:
    return walk(p, flow(p.channel), Status.SUCCESS)


def fail(p: Payment) -> Payment:
    return walk(p, flow(p.channel), Status.FAILED)


def refuse(p: Payment, message: str, accepted: bool) -> Payment:
    """Rejected by the source: after its 202 (stored FAILED) or without any answer."""
    if accepted:
        walk(p, (Step.ACCEPTED,))
    else:
        p.transaction_id = None
    reject(p, message, p.intended_at)
    return p


def deposit_row(account: tuple[str, str], amount: str, reason: str = "initial",
                at: datetime = OLD - timedelta(days=1)) -> dict[str, object]:
    return {"deposit_id": str(uuid.uuid4()), "instance_id": "test",
            "clearing_number": account[0], "account_number": account[1],
            "amount": D(amount), "reason": reason, "at": at}


def store(ledger: Ledger, rows: Iterable[Payment], written: datetime) -> None:
    for p in rows:
        ledger.write_payment(p, written)
    assert ledger.flush(5)


# --- the books' view --------------------------------------------------------------------------
def key(account: tuple[str, str]) -> AccountKey:
    return AccountKey(bank_of(account[0]), account[1])


def books_model(ledger: Ledger, accounts: Iterable[tuple[str, str]] = ACCOUNTS) -> Expectations:
    """Exactly what a reconciliation derives from this ledger (read well after every
    row was written: nothing is "recent")."""
    reader = LedgerReader(ledger.engine, payments, deposits, flush=ledger.flush)
    snapshot = reader.snapshot(datetime.now(UTC))
    return expect({key(a) for a in accounts} | snapshot.accounts, snapshot.deposits,
                  snapshot.payments, READ_ORDER)


def balances(model: Expectations) -> dict[AccountKey, tuple[object, object]]:
    """Per account the expected balance and reserved ranges (ids of summed payments
    are positional, so in-flight lists are left out)."""
    return {a: (e.balance, e.reserved) for a, e in model.accounts.items()}


def readings(real: dict[tuple[str, str], str]) -> dict[AccountKey, AccountReading | None]:
    return {key(a): AccountReading(key(a), D(v), D("0"), "sql") for a, v in real.items()}


def carried(ledger: Ledger) -> dict[tuple[str, str], Decimal]:
    rows = [r for r in ledger.load_deposits() if r["reason"] == CARRY_FORWARD]
    result: dict[tuple[str, str], Decimal] = {}
    for r in rows:
        account = (r["clearing_number"], r["account_number"])
        assert account not in result, "one carry-forward row per account"
        result[account] = r["amount"]
    return result


# --- retention --------------------------------------------------------------------------------
@dataclass
class Scenario:
    pruned_by_age: list[Payment]
    kept: list[Payment]  # never prunable: unfinished, or their effect is uncertain
    recent: list[Payment]


def scenario(ledger: Ledger) -> Scenario:
    for account in ACCOUNTS:
        ledger.write("deposit", deposit_row(account, "1000.00"))
    stuck_then_done = payment(A2, B2, "12.34")
    walk(stuck_then_done, (Step.ACCEPTED, Step.INITIATED))
    check_deadline(stuck_then_done, stuck_then_done.intended_mono + 500, 10, 30)
    assert stuck_then_done.counted is not None and stuck_then_done.counted.value == "stuck"
    walk(stuck_then_done, (Step.FORWARDED, Step.PROCESSED, Step.COMPLETED, Step.SETTLED),
         Status.SUCCESS)  # finished after all: its real outcome decides its effect
    pruned = [
        succeed(payment(A1, B1, "100.00")),
        succeed(payment(B1, A2, "30.50")),
        succeed(payment(A1, B2, "7.25", Channel.KAFKA)),  # money from outside
        fail(payment(A2, B1, "50.00")),
        fail(payment(B2, A1, "9.00", Channel.KAFKA)),
        refuse(payment(A1, B1, "5000.00"), "rejected by the source bank", accepted=True),
        refuse(payment(A1, B1, "6.00"), "not accepted by bank_a: http_400", accepted=False),
        stuck_then_done,
    ]
    ambiguous_then_events = refuse(payment(B1, A1, "4.00"), "not accepted by bank_b: timeout",
                                   accepted=False)
    ambiguous_then_events.transaction_id = uuid.uuid4()
    walk(ambiguous_then_events, (Step.INITIATED, Step.COMPLETED), Status.SUCCESS)
    stuck_open = walk(payment(A1, B2, "3.00"), (Step.ACCEPTED, Step.INITIATED))
    check_deadline(stuck_open, stuck_open.intended_mono + 500, 10, 30)
    kept = [
        refuse(payment(A2, B1, "8.00"), "not accepted by bank_a: timeout", accepted=False),
        refuse(payment(B2, A2, "2.00", Channel.KAFKA), "not produced: broker down",
               accepted=False),
        ambiguous_then_events,
        stuck_open,
        walk(payment(B2, A1, "1.00", Channel.KAFKA), (Step.INITIATED,)),
        payment(B1, A2, "11.00"),  # sent, no answer yet
    ]
    recent = [succeed(payment(B2, A1, "20.00", intended_at=RECENT)),
              succeed(payment(A2, B1, "1.00", intended_at=RECENT + timedelta(seconds=1)))]
    store(ledger, pruned + kept, OLD + timedelta(days=1))
    store(ledger, recent, RECENT + timedelta(minutes=10))
    return Scenario(pruned, kept, recent)


SCENARIO_BALANCES = {A1: "924.00", A2: "1017.16", B1: "1070.50", B2: "999.59"}


def test_pruning_carries_the_effect_forward_and_the_books_see_no_difference(
    ledger: Ledger,
) -> None:
    s = scenario(ledger)
    before = books_model(ledger)
    assert not before.accounts[key(A1)].balance.exact  # in-flight payments leave ranges
    # what the banks hold: deposits, the settled payments, and each in-flight one where
    # it stands (only the rejected-then-credited one has credited A1 so far)
    real = readings(SCENARIO_BALANCES)
    banks = list(READ_ORDER)
    assert c.balance_drift(before, real, banks).status is CheckStatus.OK
    assert c.conservation(before, real).status is CheckStatus.OK

    assert ledger.prune(timedelta(days=7), 1_000_000, NOW) == len(s.pruned_by_age)
    after_age = books_model(ledger)
    assert balances(after_age) == balances(before)
    assert after_age.total == before.total
    # REST success: source -amount, destination +amount; Kafka success: destination
    # only; failures and certain rejections: nothing. Negative where money went out.
    assert carried(ledger) == {A1: D("-100.00"), B1: D("69.50"), A2: D("18.16"),
                               B2: D("19.59")}

    # the count limit takes the oldest settled payments, never the kept ones
    assert ledger.prune(timedelta(days=7), 1, NOW) == len(s.recent)
    after_count = books_model(ledger)
    assert balances(after_count) == balances(before)
    assert after_count.total == before.total
    assert {r["payment_id"] for r in ledger.query(PaymentQuery(limit=100))} == \
        {p.payment_id for p in s.kept}
    assert carried(ledger) == {A1: D("-80.00"), B1: D("70.50"), A2: D("17.16"),
                               B2: D("-0.41")}
    assert ledger.prune(timedelta(days=7), 1, NOW) == 0
    assert len(ledger.load_deposits()) == len(ACCOUNTS) * 2  # merged, not one per run

    # the same real balances pass before and after; a drifted account fails both ways
    drifted = readings({**SCENARIO_BALANCES, A1: "1024.00"})
    for model in (before, after_age, after_count):
        assert c.balance_drift(model, real, banks).status is CheckStatus.OK
        assert c.conservation(model, real).status is CheckStatus.OK
        assert c.balance_drift(model, drifted, banks).status is CheckStatus.VIOLATED
        assert c.conservation(model, drifted).status is CheckStatus.VIOLATED


def test_a_reconciliation_torn_by_a_prune_sees_no_drift(ledger: Ledger) -> None:
    """A ledger read that is not one snapshot (READ COMMITTED on PostgreSQL) may see
    the payments before a prune and the deposits after it: the deleted payments and
    their carry both. The carry is new to that run (written after it read the banks),
    so it counts as a range and the double count cannot show as drift."""
    scenario(ledger)
    reader = LedgerReader(ledger.engine, payments, deposits, flush=ledger.flush)
    balances_read = datetime.now(UTC)
    payments_before = reader.snapshot(balances_read + timedelta(seconds=1)).payments
    assert ledger.prune(timedelta(days=7), 1, NOW) > 0
    deposits_after = reader.snapshot(balances_read - timedelta(seconds=1)).deposits
    assert any(not d.confirmed for d in deposits_after)
    torn = expect({key(a) for a in ACCOUNTS}, deposits_after, payments_before, READ_ORDER)
    real = readings(SCENARIO_BALANCES)
    assert c.balance_drift(torn, real, list(READ_ORDER)).status is CheckStatus.OK
    assert c.conservation(torn, real).status is CheckStatus.OK


def test_followed_and_just_written_payments_are_kept(ledger: Ledger) -> None:
    followed = succeed(payment(A1, B1, "5.00"))
    just_written = succeed(payment(A1, B1, "6.00"))
    old = succeed(payment(A1, B1, "7.00"))
    store(ledger, [followed, old], OLD + timedelta(days=1))
    store(ledger, [just_written], NOW - timedelta(minutes=5))  # within the quiet margin
    assert ledger.prune(timedelta(days=7), 1_000_000, NOW,
                        followed=lambda: {followed.payment_id}) == 1
    assert {r["payment_id"] for r in ledger.query(PaymentQuery())} == \
        {followed.payment_id, just_written.payment_id}
    assert carried(ledger) == {A1: D("-7.00"), B1: D("7.00")}
    # once no longer followed (and quiet) they go, and the carry grows in place
    assert ledger.prune(timedelta(days=7), 1_000_000, NOW + timedelta(minutes=10)) == 2
    assert carried(ledger) == {A1: D("-18.00"), B1: D("18.00")}


def test_the_carry_forward_is_written_in_the_same_transaction_as_the_delete(
    ledger: Ledger,
) -> None:
    rows = [succeed(payment(A1, B1, "5.00")), succeed(payment(B2, A2, "6.00"))]
    store(ledger, rows, OLD)
    with ledger.engine.begin() as conn:  # make the deposit write fail
        conn.execute(sa.text("ALTER TABLE twin_deposits RENAME TO twin_deposits_away"))
    with pytest.raises(sa.exc.SQLAlchemyError):
        ledger.prune(timedelta(days=7), 1_000_000, NOW)
    assert len(ledger.query(PaymentQuery())) == 2  # nothing deleted without its carry
    with ledger.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE twin_deposits_away RENAME TO twin_deposits"))
    assert ledger.prune(timedelta(days=7), 1_000_000, NOW) == 2
    assert carried(ledger) == {A1: D("-5.00"), B1: D("5.00"), B2: D("-6.00"), A2: D("6.00")}


def test_without_delete_returning_the_rows_are_locked_read_then_deleted(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The path for databases without DELETE ... RETURNING gives the same result."""
    rows = [succeed(payment(A1, B1, "5.00")), succeed(payment(B2, A2, "6.00", Channel.KAFKA)),
            walk(payment(A2, B2, "7.00"), (Step.ACCEPTED,))]
    store(ledger, rows, OLD)
    monkeypatch.setattr(ledger.engine.dialect, "delete_returning", False)
    assert ledger.prune(timedelta(days=7), 1_000_000, NOW) == 2
    assert [r["payment_id"] for r in ledger.query(PaymentQuery())] == [rows[2].payment_id]
    assert carried(ledger) == {A1: D("-5.00"), B1: D("5.00"), A2: D("6.00")}


def test_prune_refuses_while_buffered_rows_cannot_be_stored(tmp_path: Path) -> None:
    """An older snapshot stored after the delete would bring a payment back, counted
    twice: so nothing is pruned before the buffer is stored."""
    book = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert book.open()
    try:
        book.write_payment(succeed(payment(A1, B1, "5.00")), OLD)  # no writer thread
        with pytest.raises(LedgerUnavailable):
            book.prune(timedelta(days=7), 1_000_000, NOW, flush_timeout=0.1)
    finally:
        book.close()


def test_every_rejection_the_books_find_ambiguous_is_kept(ledger: Ledger) -> None:
    """Whatever the message, a REST payment the bank stored FAILED after its 202 is a
    certain rejection; without a 202 (or on Kafka) these messages leave it open."""
    assert set(BOOKS_AMBIGUOUS) <= set(AMBIGUOUS_REJECTIONS)
    open_, certain = [], []
    for marker in BOOKS_AMBIGUOUS:
        for channel in Channel:
            open_.append(refuse(payment(A1, B1, "5.00", channel), f"refused{marker} (x)",
                                accepted=False))
        certain.append(refuse(payment(A1, B1, "5.00"), f"refused{marker} (x)", accepted=True))
    store(ledger, open_ + certain, OLD)
    before = books_model(ledger)
    assert ledger.prune(timedelta(days=7), 1, NOW) == len(certain)
    assert {r["payment_id"] for r in ledger.query(PaymentQuery(limit=100))} == \
        {p.payment_id for p in open_}
    assert balances(books_model(ledger)) == balances(before)


# --- the same, for any mix of payment stories (SQLite in memory, many examples) ---------------
STORIES = ("success", "failed", "refused", "refused_after_202", "ambiguous",
           "ambiguous_then_events", "refused_then_events", "stuck_then_success", "open_0",
           "open_1", "open_2")


def tell(story: str, p: Payment) -> Payment:
    steps = flow(p.channel)
    if story == "success":
        return succeed(p)
    if story == "failed":
        return fail(p)
    if story == "refused":
        return refuse(p, "not accepted by bank_a: http_400", accepted=False)
    if story == "refused_after_202":
        return refuse(p, "rejected by the source bank", accepted=p.channel is Channel.REST)
    if story == "ambiguous":
        return refuse(p, "not produced: down" if p.channel is Channel.KAFKA
                      else "not accepted by bank_a: connection", accepted=False)
    if story in ("ambiguous_then_events", "refused_then_events"):
        refuse(p, "not accepted by bank_a: timeout" if story == "ambiguous_then_events"
               else "rejected by the source bank", accepted=False)
        p.transaction_id = uuid.uuid4()  # events seen after all
        return walk(p, steps[-3:], Status.SUCCESS)
    if story == "stuck_then_success":
        check_deadline(p, p.intended_mono + 500, 10, 30)
        return succeed(p)
    return walk(p, steps[:int(story[-1])])


story_payments = st.lists(st.tuples(
    st.sampled_from(STORIES), st.sampled_from(list(Channel)),
    st.sampled_from([(A1, B1), (A2, B2), (B1, A1), (B2, A2), (A1, B2), (B1, A2)]),
    st.integers(1, 100_000), st.integers(0, 20)), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stories=story_payments, max_payments=st.integers(1, 30))
def test_any_prune_leaves_the_books_model_unchanged(
    stories: list[tuple[str, Channel, tuple[tuple[str, str], tuple[str, str]], int, int]],
    max_payments: int,
) -> None:
    book = Ledger("sqlite://", flush_interval=0.01)
    assert book.open()
    book.start()
    try:
        for account in ACCOUNTS:
            book.write("deposit", deposit_row(account, "500.00"))
        rows = [tell(story, payment(src, dst, str(D(cents) / 100), channel,
                                    OLD + timedelta(days=days)))
                for story, channel, (src, dst), cents, days in stories]
        store(book, rows, NOW - timedelta(days=1))
        before = books_model(book)
        deleted = book.prune(timedelta(days=20), max_payments, NOW)
        after = books_model(book)
        assert balances(after) == balances(before)
        assert after.total == before.total
        left = {r["payment_id"]: r for r in book.query(PaymentQuery(limit=100))}
        assert len(left) == len(rows) - deleted
        assert all(p.finished for p in rows if p.payment_id not in left)
        assert {p.payment_id for p in rows if not p.finished} <= set(left)
        target(float(deleted))  # steer towards examples that prune much
    finally:
        book.stop(1)
        book.close()
