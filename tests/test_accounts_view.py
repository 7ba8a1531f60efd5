"""The accounts view on real processes: a ``bgmock-twin emulate`` BGMock and a
``bgmock-twin run`` twin pointed at it (external mode). After a run, ``GET
/api/v1/accounts`` shows every twin account with the balance BGMock itself reports
(read here straight from the banks' REST API, or their PostgreSQL databases), the
expected range from the twin's ledger, zero drift, and the payments in flight while
a bank holds them; the per-bank gauges add the same up; ``bgmock-twin accounts``
prints the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests.support.daemon import Daemon, running_daemon
from tests.support.emulator_process import EmulatorProcess, running_emulator
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer, writable_engine

ROOT = Path(__file__).resolve().parent.parent
BANKS = ("bank_a", "bank_b")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorProcess, Daemon]]:
    base = tmp_path_factory.mktemp("accounts")
    (base / "emulator").mkdir()
    (base / "twin").mkdir()
    with running_emulator(base / "emulator", TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS="0.1") \
            as bgmock, running_daemon(base / "twin", **bgmock.external_env(),
                                      TWIN_LOAD_RATE="0", TWIN_INSTANCE_ID="accounts",
                                      TWIN_RECONCILE_INTERVAL_SECONDS="3600") as twin:
        wait_for(lambda: twin.get("/api/v1/status").json()["payments"]["provisioned"] is True,
                 timeout=60, interval=0.2, message="twin accounts provisioned")
        yield bgmock, twin


def _run(twin: Daemon, **body: Any) -> str:
    answer = twin.post("/api/v1/simulations", json=body)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


def _finished(twin: Daemon, sim_id: str) -> None:
    wait_for(lambda: twin.get(f"/api/v1/simulations/{sim_id}").json()["state"] == "finished",
             timeout=90, interval=0.3, message="simulation finished")


def _accounts(twin: Daemon) -> dict[str, Any]:
    ran = twin.post("/api/v1/reconciliation/run")
    assert ran.status_code == 200, ran.text
    answer = twin.get("/api/v1/accounts")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _bank_account(bgmock: EmulatorProcess, bank: str, number: str) -> dict[str, Any]:
    answer = requests.get(f"{bgmock.urls[bank]}/bank/account/{number}", timeout=10)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_after_a_run_every_account_shows_bgmocks_balance_with_zero_drift(
        world: tuple[EmulatorProcess, Daemon]) -> None:
    bgmock, twin = world
    _finished(twin, _run(twin, count=24, rate=12, failureShare=0.25, name="accounts"))
    body = _accounts(twin)
    assert body["status"] == "ok" and body["readAt"]
    assert body["banksRead"] == list(BANKS)
    accounts = body["accounts"]
    assert {a["bank"] for a in accounts} == set(BANKS)
    assert len(accounts) >= 8  # payers and payees at both banks, and more
    for item in accounts:
        real = _bank_account(bgmock, item["bank"], item["account"])
        assert Decimal(item["balance"]) == Decimal(str(real["balance"])), item
        assert Decimal(item["reserved"]) == Decimal(str(real.get("reservedBalance") or 0))
        low, high = (Decimal(item["expectedBalance"][k]) for k in ("min", "max"))
        assert low <= Decimal(item["balance"]) <= high
        assert Decimal(item["drift"]) == 0
        assert (item["inFlight"], item["inFlightPayments"], item["source"]) == (0, [], "rest")
        assert item["read"] is True and item["missing"] is False
    # the accounts added up per bank: the API and the gauges agree with BGMock
    for bank in BANKS:
        mine = [a for a in accounts if a["bank"] == bank]
        total = sum(Decimal(a["balance"]) for a in mine)
        assert Decimal(body["banks"][bank]["balance"]) == total
        assert Decimal(body["banks"][bank]["drift"]) == 0
        assert twin.metric("bgmock_account_balance", bank=bank) == pytest.approx(float(total))
        low = twin.metric("bgmock_account_balance_expected_min", bank=bank)
        high = twin.metric("bgmock_account_balance_expected_max", bank=bank)
        assert low is not None and high is not None and low <= float(total) <= high
    one = twin.get("/api/v1/accounts", params={"bank": "bank_b"}).json()
    assert {a["bank"] for a in one["accounts"]} == {"bank_b"} and set(one["banks"]) == {"bank_b"}
    assert twin.get("/api/v1/accounts", params={"bank": "mars"}).status_code == 422


def test_payments_held_by_a_bank_show_in_flight_on_their_accounts(
        world: tuple[EmulatorProcess, Daemon]) -> None:
    bgmock, twin = world
    admin = f"{bgmock.urls['admin']}/_emulator/faults"
    assert requests.post(admin, json={"service": "bank_b", "paused": True},
                         timeout=10).status_code == 200
    try:
        sim_id = _run(twin, count=3, rate=10, direction="a_to_b", name="held")

        def held() -> list[str] | None:
            items = twin.get("/api/v1/transactions",
                             params={"simulation": sim_id, "limit": 10}).json()["items"]
            ids = [i["paymentId"] for i in items if i["state"] not in ("submitted",)]
            return ids if len(ids) == 3 else None

        payment_ids = set(wait_for(held, timeout=30, interval=0.2, message="accepted"))
        body = _accounts(twin)
        flying = {a["account"]: a for a in body["accounts"] if a["inFlight"]}
        payers = [a for a in flying.values() if a["bank"] == "bank_a"]
        payees = [a for a in flying.values() if a["bank"] == "bank_b"]
        assert payers and payees, body["accounts"]
        listed = {p for a in flying.values() for p in a["inFlightPayments"]}
        assert listed == payment_ids
        assert sum(a["inFlight"] for a in payers) == 3
        for item in flying.values():
            assert Decimal(item["drift"]) == 0  # in flight widens the range, never drifts
            real = _bank_account(bgmock, item["bank"], item["account"])
            assert Decimal(item["reserved"]) == Decimal(str(real.get("reservedBalance") or 0))
        assert sum(Decimal(a["reserved"]) for a in payers) > 0
    finally:
        requests.post(admin, json={"service": "bank_b", "paused": False}, timeout=10)
    _finished(twin, sim_id)
    after = _accounts(twin)
    assert all(a["inFlight"] == 0 and Decimal(a["drift"]) == 0 for a in after["accounts"])


def test_the_accounts_command_prints_the_table(world: tuple[EmulatorProcess, Daemon]) -> None:
    _, twin = world
    body = _accounts(twin)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "160"  # the table's width, whatever the runner's terminal says
    result = subprocess.run([sys.executable, "-m", "bgmock_twin", "accounts", "--url",
                             twin.url], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("accounts as read at ")
    header = next(line for line in lines if line.lstrip().startswith("bank "))
    assert header.split()[:4] == ["bank", "account", "balance", "expected"]
    for item in body["accounts"]:
        row = next(line for line in lines if f" {item['account']} " in line)
        assert row.split()[0] == item["bank"] and item["balance"] in row.split()
    # the per-bank totals: every account read, the sum BGMock's
    at_a = [a for a in body["accounts"] if a["bank"] == "bank_a"]
    totals = next(line.split() for line in lines
                  if line.split()[:2] == ["bank_a", f"{len(at_a)}/{len(at_a)}"])
    assert Decimal(totals[2]) == sum(Decimal(a["balance"]) for a in at_a)
    raw = subprocess.run([sys.executable, "-m", "bgmock_twin", "accounts", "--url", twin.url,
                          "--json", "--bank", "bank_a"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert raw.returncode == 0, raw.stderr
    assert {a["bank"] for a in json.loads(raw.stdout)["accounts"]} == {"bank_a"}


DATABASES = {"db_bank_a": "TWIN_EMULATOR_DB_BANK_A", "db_bank_b": "TWIN_EMULATOR_DB_BANK_B",
             "db_switch": "TWIN_EMULATOR_DB_SWITCH"}


def test_with_the_banks_databases_the_balances_come_from_sql(
        tmp_path: Path, postgres: PostgresServer) -> None:
    urls = {name: postgres.create_database(f"acc_{name}") for name in DATABASES}
    (tmp_path / "emulator").mkdir()
    (tmp_path / "twin").mkdir()
    with running_emulator(tmp_path / "emulator", TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS="0.1",
                          **{DATABASES[n]: u for n, u in urls.items()}) as bgmock, \
            running_daemon(tmp_path / "twin", **bgmock.external_env(), TWIN_LOAD_RATE="0",
                           TWIN_RECONCILE_INTERVAL_SECONDS="3600",
                           DB_BANK_A=urls["db_bank_a"], DB_BANK_B=urls["db_bank_b"]) as twin:
        wait_for(lambda: twin.get("/api/v1/status").json()["payments"]["provisioned"] is True,
                 timeout=60, interval=0.2, message="twin accounts provisioned")
        _finished(twin, _run(twin, count=10, rate=10))
        body = _accounts(twin)
        assert body["banksRead"] == list(BANKS)
        for bank in BANKS:
            engine = writable_engine(urls[f"db_{bank}"])
            try:
                with engine.connect() as conn:
                    rows = {r[0]: (r[1], r[2]) for r in conn.execute(sa.text(
                        "SELECT account_number, balance, reserved_balance FROM accounts"))}
            finally:
                engine.dispose()
            for item in (a for a in body["accounts"] if a["bank"] == bank):
                assert item["source"] == "sql"
                balance, reserved = rows[item["account"]]
                assert (Decimal(item["balance"]), Decimal(item["reserved"])) == (
                    Decimal(balance), Decimal(reserved))
                assert Decimal(item["drift"]) == 0 and item["inFlight"] == 0
