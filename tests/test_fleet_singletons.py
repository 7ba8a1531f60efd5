"""Replicas on one ledger: their own accounts, one canary, one set of books, one
opening balance per account (issue 13).

Real processes: a ``bgmock-twin emulate`` BGMock on a Tansu broker, ``bgmock-twin
run`` replicas in external mode following it over Kafka, one PostgreSQL ledger.
The replicas are started at the same moment, as a StatefulSet's pods are.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests.support.broker import TansuBroker
from tests.support.daemon import Daemon, running_daemon
from tests.support.emulator_process import EmulatorProcess, running_emulator
from tests.support.fleet import held, reconciled
from tests.support.ports import wait_for
from tests.support.postgres import writable_engine

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

FLEET_ENV = {
    "TWIN_ACCOUNTS_PER_BANK": "2",
    "TWIN_RECONCILE_INTERVAL_SECONDS": "2",
    "TWIN_KAFKA_SESSION_TIMEOUT_MS": "6000",
}


@pytest.fixture
def bgmock(tmp_path: Path, kafka_broker: TansuBroker) -> Iterator[EmulatorProcess]:
    (tmp_path / "emulator").mkdir()
    with running_emulator(tmp_path / "emulator", KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
                          TWIN_KAFKA_SESSION_TIMEOUT_MS="6000",
                          TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS="0.1") as emulator:
        yield emulator


@contextmanager
def fleet(tmp_path: Path, bgmock: EmulatorProcess, broker: TansuBroker, ledger: str,
          ids: list[str], **overrides: str) -> Iterator[list[Daemon]]:
    """Replicas ``ids`` started together on ``ledger``, once all are ready."""
    with ExitStack() as stack:
        twins = []
        for instance in ids:
            (tmp_path / instance).mkdir()
            twins.append(stack.enter_context(running_daemon(
                tmp_path / instance, ready=False, **bgmock.external_env(),
                KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, TWIN_DATABASE_URL=ledger,
                TWIN_INSTANCE_ID=instance, **{**FLEET_ENV, **overrides})))
        for twin in twins:
            def ready(twin: Daemon = twin) -> bool:
                if twin.process.poll() is not None:
                    raise RuntimeError(f"replica exited:\n{twin.log()[-3000:]}")
                return twin.get("/readyz").status_code == 200 and \
                    twin.get("/api/v1/status").json()["payments"]["provisioned"] is True

            wait_for(ready, timeout=90, interval=0.2, message="replica ready and provisioned")
        yield twins


def _rows(ledger: str, query: str) -> list[Any]:
    engine = writable_engine(ledger)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query)).all())
    finally:
        engine.dispose()


def _simulate(twin: Daemon, count: int) -> str:
    """A simulation of ``count`` payments (BGMock's optimistic lock may refuse a few
    that meet on one payer: they are finished, rejected, and in the books)."""
    answer = twin.post("/api/v1/simulations", json={"count": count, "rate": 10})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _finished(twin: Daemon, sim_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = twin.get(f"/api/v1/simulations/{sim_id}").json()
        return body if body["state"] == "finished" else None

    found: dict[str, Any] = wait_for(done, timeout=90, interval=0.3, message="simulation done")
    return found


def _bank_balance(bgmock: EmulatorProcess, clearing: str, number: str) -> Decimal:
    bank = "bank_a" if clearing == "01" else "bank_b"
    answer = requests.get(f"{bgmock.urls[bank]}/bank/account/{number}", timeout=10)
    assert answer.status_code == 200, answer.text
    return Decimal(str(answer.json()["balance"]))


def test_replicas_pay_from_their_own_accounts_with_one_canary_and_one_set_of_books(
        tmp_path: Path, bgmock: EmulatorProcess, kafka_broker: TansuBroker,
        pg_database: str) -> None:
    ids = ["twin-0", "twin-1"]
    with fleet(tmp_path, bgmock, kafka_broker, pg_database, ids,
               TWIN_LOAD_RATE="4") as twins:
        sims = [_simulate(twin, 30) for twin in twins]
        for twin, sim_id in zip(twins, sims, strict=True):
            body = _finished(twin, sim_id)
            assert (body["dispatched"], body["dropped"], body["unfinished"]) == (30, 0, 0), body
            assert body["outcomes"]["stuck"] == 0, body
        # each replica pays between its own accounts: ordinal 1 carries it in the names
        by_replica = _rows(pg_database, "SELECT instance_id, from_account, to_account "
                                        "FROM twin_payments WHERE simulation_id IS NOT NULL")
        assert {row[0] for row in by_replica} == set(ids)
        for instance, payer, payee in by_replica:
            owned = payer.startswith("TWIN-R1-") and payee.startswith("TWIN-R1-")
            assert owned == (instance == "twin-1"), (instance, payer, payee)
        # one canary and one reconciliation for the fleet
        canary = wait_for(lambda: held(twins, "canary") or None, timeout=20, interval=0.5,
                          message="a canary runner")
        books = wait_for(lambda: held(twins, "books") or None, timeout=20, interval=0.5,
                         message="a books runner")
        assert len(canary) == 1 and len(books) == 1
        canary_senders = {row[0] for row in _rows(
            pg_database, "SELECT DISTINCT instance_id FROM twin_payments "
                         "WHERE simulation_id IS NULL")}
        assert canary_senders == set(canary)
        assert {twin.get("/api/v1/status").json()["payments"]["canaryBy"]
                for twin in twins} == set(canary)
        holder = twins[ids.index(books[0])]
        other = twins[1 - ids.index(books[0])]
        # the books cover both replicas' accounts and payments, exactly
        report = reconciled(holder)
        assert report["reconciledBy"] == books[0]
        accounts = holder.get("/api/v1/accounts").json()["accounts"]
        names = {a["account"] for a in accounts}
        assert {"TWIN-A-001", "TWIN-B-002", "TWIN-R1-A-001", "TWIN-R1-B-002"} <= names
        assert all(Decimal(a["drift"]) == 0 for a in accounts), accounts
        # the other replica names the holder and exports none of the books' figures
        assert other.get("/api/v1/reconciliation").json()["reconciledBy"] == books[0]
        assert other.get("/api/v1/status").json()["books"]["reconciledBy"] == books[0]
        assert other.metric("bgmock_invariant_violations", check="balance_drift") is None
        assert holder.metric("bgmock_invariant_violations", check="balance_drift") == 0.0
        # the holder dies: the other takes the books and the canary when the leases run out
        os.kill(holder.process.pid, signal.SIGKILL)
        holder.process.wait(timeout=10)
        survivor = other.get("/api/v1/status").json()["instance"]
        wait_for(lambda: held([other], "books") == [survivor]
                 and held([other], "canary") == [survivor], timeout=30, interval=0.5,
                 message="the survivor runs the books and the canary")
        assert reconciled(other)["reconciledBy"] == survivor


@pytest.mark.parametrize("earlier_life", [True, False], ids=["adopted", "created"])
def test_replicas_sharing_accounts_record_one_opening_or_initial_deposit_each(
        tmp_path: Path, bgmock: EmulatorProcess, kafka_broker: TansuBroker,
        pg_database: str, earlier_life: bool) -> None:
    """Two replicas whose instance ids carry no ordinal share the ``TWIN-*`` set;
    started together on an empty ledger they record each account's starting point
    once: its opening balance when a twin of an earlier life left it in BGMock, its
    initial deposit when they create it."""
    if earlier_life:
        (tmp_path / "earlier").mkdir()
        with running_daemon(tmp_path / "earlier", **bgmock.external_env(),
                            KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
                            TWIN_INSTANCE_ID="earlier", TWIN_LOAD_RATE="0",
                            **FLEET_ENV) as earlier:
            body = _finished(earlier, _simulate(earlier, 12))
            assert (body["dispatched"], body["unfinished"]) == (12, 0), body
    with fleet(tmp_path, bgmock, kafka_broker, pg_database, ["twin-a", "twin-b"],
               TWIN_LOAD_RATE="0") as twins:
        deposits = _rows(pg_database, "SELECT clearing_number, account_number, reason, amount "
                                      "FROM twin_deposits")
        payers = {(c, n) for c, n, _, _ in deposits if "LOW" not in n}
        assert len(payers) == 4, deposits  # 2 payers at each bank, one set for both
        for key in payers:
            mine = [(reason, amount) for c, n, reason, amount in deposits if (c, n) == key]
            assert len(mine) == 1, (key, deposits)
            reason, amount = mine[0]
            assert reason == ("opening" if earlier_life else "initial"), deposits
            assert Decimal(amount) == _bank_balance(bgmock, *key)
        holder = wait_for(lambda: held(twins, "books") or None, timeout=20, interval=0.5,
                          message="a books runner")
        ids = ["twin-a", "twin-b"]
        reconciled(twins[ids.index(holder[0])])
