"""The emulator's books on real PostgreSQL (one database per service): the real
table layout, row locking under concurrent payments, outbox rows drained."""

from __future__ import annotations

import threading
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
    clearing_outbox_events,
    clearing_outgoing_transactions,
)
from bgmock_twin.emulator import EmulatorConfig
from tests.support.emulator_world import FAST_OUTBOX, World, emulator_world
from tests.support.postgres import PostgresServer, writable_engine


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
    lock = threading.Lock()

    def pay() -> None:
        with requests.Session() as session:
            answer = session.post(f"{w.a}/bank/transaction/outgoing", json={
                "fromAccountNumber": payer, "toBankgoodNumber": bankgood, "amount": "12.5"})
            assert answer.status_code == 202
            with lock:
                ids.append(answer.json()["transactionId"])

    threads = [threading.Thread(target=pay) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = [w.final("01", tx)["status"] for tx in ids]
    # 100 / 12.50 = 8 payments fit; row locks keep concurrent reservations honest.
    assert statuses.count("SUCCESS") == 8 and statuses.count("FAILED") == 4
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
