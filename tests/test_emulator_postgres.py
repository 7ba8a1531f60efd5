"""The emulator's books on real PostgreSQL (one database per service): the real
table layout, optimistic locking (``@Version``) under concurrent writes, outbox rows
drained."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests
import sqlalchemy as sa

from bgmock_twin.bus.memory import InMemoryBus
from bgmock_twin.contract.tables import (
    accounts,
    bank_mappings,
    bank_outbox_events,
    bank_outgoing_transactions,
    clearing_outbox_events,
    clearing_outgoing_transactions,
)
from bgmock_twin.emulator import EmulatorConfig
from tests.support.emulator_world import FAST_OUTBOX, World, emulator_world
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer, writable_engine
from tests.test_emulator_contract import events_count, lock_failures


@pytest.fixture
def pg_world(postgres: PostgresServer) -> Iterator[World]:
    urls = {name: postgres.create_database(f"bgmock_emu_{name}")
            for name in ("bank_a", "bank_b", "clearing")}
    with emulator_world(EmulatorConfig(bus=InMemoryBus(), db_urls=urls,
                                       outbox_interval_seconds=FAST_OUTBOX)) as world:
        yield world


def test_payments_on_postgres_keep_the_books_straight(pg_world: World) -> None:
    w = pg_world
    assert all(url and url.startswith("postgresql") for url in w.emulator.database_urls.values())
    assert {e.dialect.name for e in w.emulator.engines.values()} == {"postgresql"}
    payer = w.account("01", "100.00")
    payee = w.account("02", "0.00")
    bankgood = w.mapping("02", payee)
    ids: list[str] = []
    lost: list[int] = []
    lock = threading.Lock()

    def pay() -> None:
        with requests.Session() as session:
            answer = session.post(f"{w.a}/bank/transaction/outgoing", json={
                "fromAccountNumber": payer, "toBankgoodNumber": bankgood, "amount": "12.5"})
            with lock:
                if answer.status_code == 500:  # lost the race on the payer's version
                    lost.append(1)
                else:
                    assert answer.status_code == 202, answer.text
                    ids.append(answer.json()["transactionId"])

    # 100 / 12.50 = 8 payments fit. Rounds of 12 concurrent payments until they are
    # spent: versioned writes keep concurrent reservations honest, losers store nothing.
    successes = 0
    for _ in range(20):
        threads = [threading.Thread(target=pay) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        successes = [w.final("01", tx)["status"] for tx in ids].count("SUCCESS")
        if successes == 8:
            break
    statuses = [w.final("01", tx)["status"] for tx in ids]
    assert statuses.count("SUCCESS") == 8
    assert statuses.count("FAILED") == len(ids) - 8
    assert w.balances("01", payer) == (Decimal("0.00"), Decimal("0.00"))
    assert w.balances("02", payee) == (Decimal("100.00"), Decimal("0.00"))

    # An independent connection sees the real layout, committed and drained.
    engine = writable_engine(w.emulator.database_urls["bank_a"] or "")
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(accounts.c.balance, accounts.c.reserved_balance)
                               .where(accounts.c.account_number == payer)).one()
            assert (row.balance, row.reserved_balance) == (Decimal("0.00"), Decimal("0.00"))
            pending = conn.execute(sa.select(sa.func.count()).select_from(bank_outbox_events)
                                   .where(bank_outbox_events.c.published.is_(False)))
            assert pending.scalar_one() == 0
            published = conn.execute(sa.select(sa.func.count())
                                     .select_from(bank_outbox_events)).scalar_one()
            assert published == 8
            stored = conn.execute(sa.select(sa.func.count()).select_from(
                bank_outgoing_transactions)).scalar_one()
            assert stored == len(ids)  # every 500 stored nothing
    finally:
        engine.dispose()
    with w.emulator.engines["clearing"].connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(bank_mappings)
                            ).scalar_one() == 1
        assert conn.execute(sa.select(sa.func.count()).select_from(
            clearing_outgoing_transactions)).scalar_one() == 8
        assert conn.execute(sa.select(sa.func.count()).select_from(clearing_outbox_events)
                            ).scalar_one() == 16  # forwarded + completed each


def test_duplicate_account_is_500_on_postgres_too(pg_world: World) -> None:
    w = pg_world
    number = w.account("01", "1.00")
    duplicate = w.http.post(f"{w.a}/bank/account", json={"accountNumber": number,
                                                         "balance": 1})
    assert duplicate.status_code == 500
    assert w.http.get(f"{w.a}/bank/health").text == "OK"


def _wait_blocked_on_row_lock(engine: sa.Engine) -> None:
    """Until another session waits for a row lock (the versioned UPDATE under test)."""
    def blocked() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(sa.text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one())

    wait_for(blocked, timeout=20, interval=0.02, message="a writer waiting on the row lock")


def _racing_credit(url: str, number: str) -> tuple[sa.Engine, sa.Connection]:
    """Another writer's uncommitted credit of 5.00 on ``number`` (a listener's write:
    balance and version), holding the row lock until the caller commits."""
    engine = writable_engine(url)
    conn = engine.connect()
    conn.execute(accounts.update().where(accounts.c.account_number == number).values(
        balance=accounts.c.balance + 5, version=accounts.c.version + 1))
    return engine, conn


def test_rest_payment_losing_the_race_on_the_payer_is_500_with_nothing_stored(
    pg_world: World,
) -> None:
    w = pg_world
    payer = w.account("01", "100.00")
    bankgood = w.mapping("02", w.account("02", "0.00"))
    url = w.emulator.database_urls["bank_a"] or ""
    engine, other = _racing_credit(url, payer)
    answer: list[requests.Response] = []
    try:
        before = lock_failures("bank_a", "rest")
        thread = threading.Thread(target=lambda: answer.append(w.http.post(
            f"{w.a}/bank/transaction/outgoing", json={
                "fromAccountNumber": payer, "toBankgoodNumber": bankgood, "amount": "30"})))
        thread.start()
        # the request read version 0 and now waits to write it: the credit commits first
        _wait_blocked_on_row_lock(engine)
        other.commit()
        thread.join(timeout=30)
    finally:
        other.close()
        engine.dispose()
    assert answer and answer[0].status_code == 500, answer
    assert lock_failures("bank_a", "rest") == before + 1
    assert w.balances("01", payer) == (Decimal("105.00"), Decimal("0.00"))  # nothing reserved
    with w.emulator.engines["bank_a"].connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(bank_outgoing_transactions)
                            .where(bank_outgoing_transactions.c.from_account_number == payer)
                            ).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(bank_outbox_events)
                            ).scalar_one() == 0


def test_listener_losing_the_race_retries_and_credits_once(pg_world: World) -> None:
    w = pg_world
    payee = w.account("02", "10.00")
    url = w.emulator.database_urls["bank_b"] or ""
    engine, other = _racing_credit(url, payee)
    tx = str(uuid.uuid4())
    try:
        before = lock_failures("bank_b", "listener")
        handled = events_count("bank_b", "transactions.forwarded", "handled")
        producer = w.bus.producer()
        producer.produce("transactions.forwarded", "02", (
            '{"transactionId":"%s","toClearingNumber":"02","toAccountNumber":"%s",'
            '"amount":20.00,"status":"PENDING","createdAt":null,"updatedAt":null}'
            % (tx, payee)).encode())
        producer.flush(5)
        _wait_blocked_on_row_lock(engine)
        other.commit()
    finally:
        other.close()
        engine.dispose()
    wait_for(lambda: w.incoming("02", tx), timeout=20, message="credit handled after retry")
    assert lock_failures("bank_b", "listener") >= before + 1
    assert events_count("bank_b", "transactions.forwarded", "handled") == handled + 1
    assert w.balances("02", payee) == (Decimal("35.00"), Decimal("0.00"))
    w.spy.wait(tx, "transactions.processed")
    assert len(w.spy.of(tx, "transactions.processed")) == 1
