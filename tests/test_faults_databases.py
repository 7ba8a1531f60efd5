"""Fault: databases go away.

A real ``bgmock-twin run`` on Tansu whose embedded emulator keeps its three
databases on PostgreSQL. The twin reaches those databases (``DB_BANK_A``,
``DB_BANK_B``, ``DB_SWITCH``) and its own ledger (``TWIN_DATABASE_URL``, also
PostgreSQL) through TCP proxies that the tests cut - open sessions reset, new
connections refused - and restore, while payments flow:

- BGMock's databases gone during reconciliation: the checks that need them are
  "unknown", never "violated", and come back "ok";
- the twin's own ledger gone for a few seconds: writes wait in the bounded buffer
  and nothing measured is lost once it returns (and nothing is dropped).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.support.broker import TansuBroker
from tests.support.daemon import Daemon, running_daemon
from tests.support.faultkit import (
    DETECTION_BOUND,
    FAST_ENV,
    FLOW,
    assert_accounted,
    metric_sum,
    payments,
    service_up,
    start_simulation,
    steps,
    wait_dispatched,
    wait_finished,
    wait_provisioned,
)
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

DATABASES = {"db_bank_a": "bank_a", "db_bank_b": "bank_b", "db_switch": "clearing"}
ENV_OF = {"db_bank_a": "DB_BANK_A", "db_bank_b": "DB_BANK_B", "db_switch": "DB_SWITCH"}
EMULATOR_ENV_OF = {"db_bank_a": "TWIN_EMULATOR_DB_BANK_A", "db_bank_b": "TWIN_EMULATOR_DB_BANK_B",
                   "db_switch": "TWIN_EMULATOR_DB_SWITCH"}
# the checks that read BGMock's databases and nothing else
DB_CHECKS = ("reserved_matches_pending", "status_agreement", "outbox_backlog",
             "outbox_integrity", "stale_pending")


@dataclass
class World:
    daemon: Daemon
    proxies: dict[str, TcpProxy]
    ledger_proxy: TcpProxy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, kafka_broker: TansuBroker,
          postgres: PostgresServer) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("faults-databases")
    env = {**FAST_ENV, "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
           "TWIN_DB_STATEMENT_TIMEOUT_MS": "1000"}
    proxies: dict[str, TcpProxy] = {}
    try:
        for service in DATABASES:
            url = postgres.create_database(f"fault_{service}")
            proxies[service] = TcpProxy(int(make_url(url).port or 5432))
            env[EMULATOR_ENV_OF[service]] = url  # BGMock itself keeps its database
            env[ENV_OF[service]] = proxies[service].url_for(url)  # the twin's road to it
        ledger_url = postgres.create_database("fault_ledger")
        ledger_proxy = TcpProxy(int(make_url(ledger_url).port or 5432))
        env["TWIN_DATABASE_URL"] = ledger_proxy.url_for(ledger_url)
        with running_daemon(tmp, **env) as daemon:
            for service in (*DATABASES, "bank_a", "kafka"):
                wait_for(lambda s=service: service_up(daemon, s) == 1.0,  # type: ignore[misc]
                         timeout=20, message=f"{service} up")
            wait_provisioned(daemon)
            yield World(daemon, proxies, ledger_proxy)
    finally:
        for proxy in proxies.values():
            proxy.close()
        if "ledger_proxy" in locals():
            ledger_proxy.close()


def next_report(daemon: Daemon, after: str | None, timeout: float = 20) -> dict[str, Any]:
    """The first reconciliation report that ran after ``after``."""
    def fresh() -> dict[str, Any] | None:
        report: dict[str, Any] = daemon.get("/api/v1/reconciliation").json()
        ran_at = report["ranAt"]
        return report if ran_at is not None and (after is None or ran_at > after) else None

    return wait_for(fresh, timeout=timeout, interval=0.2, message="a new reconciliation")


def check_statuses(report: dict[str, Any]) -> dict[str, str]:
    return {name: check["status"] for name, check in report["checks"].items()}


def test_bgmock_databases_gone_during_reconciliation_are_unknown_not_violated(
        world: World) -> None:
    daemon = world.daemon
    sim = start_simulation(daemon, count=30, rate=10, name="db-outage")
    wait_dispatched(daemon, sim, 5)
    healthy = next_report(daemon, None)
    print(f"before: {check_statuses(healthy)}")
    assert healthy["violations"] == 0, healthy
    detections = metric_sum(daemon, "bgmock_invariant_violations_detected_total")

    # slow answers make each run's reads take seconds, so the cut below most likely
    # breaks sessions in the middle of a reconciliation's queries
    for proxy in world.proxies.values():
        proxy.latency = 0.3
    slow = next_report(daemon, healthy["ranAt"])
    print(f"slow databases: a run takes {slow['durationSeconds']}s, "
          f"{check_statuses(slow)}")
    assert slow["violations"] == 0, slow
    cut = time.monotonic()
    for proxy in world.proxies.values():
        proxy.cut()
        proxy.latency = 0.0
    for service in DATABASES:
        wait_for(lambda s=service: service_up(daemon, s) == 0.0,  # type: ignore[misc]
                 timeout=DETECTION_BOUND, interval=0.05, message=f"{service} down")
    detected = time.monotonic() - cut
    # a run that started while the sessions broke, then runs against refused connections
    reports = [next_report(daemon, slow["ranAt"])]
    reports.append(next_report(daemon, reports[-1]["ranAt"]))
    for report in reports:
        statuses = check_statuses(report)
        print(f"databases gone: {statuses}; sources "
              f"{ {k: v[:60] for k, v in report['sources'].items()} }")
        assert "violated" not in statuses.values(), report
        assert report["violations"] == 0, report
        for check in DB_CHECKS:
            assert statuses[check] == "unknown", (check, report["checks"][check])
    for check in DB_CHECKS:
        assert daemon.metric("bgmock_reconciliation_check_unknown", check=check) == 1.0, check
        assert daemon.metric("bgmock_invariant_violations", check=check) == 0.0, check
    print(f"databases seen down after {detected:.2f}s (bound {DETECTION_BOUND}s)")

    for proxy in world.proxies.values():
        proxy.restore()
    for service in DATABASES:
        wait_for(lambda s=service: service_up(daemon, s) == 1.0,  # type: ignore[misc]
                 timeout=DETECTION_BOUND + 2, message=f"{service} back")
    wait_finished(daemon, sim, timeout=30)

    def all_ok() -> dict[str, Any] | None:
        report = next_report(daemon, None)
        statuses = check_statuses(report)
        return report if set(statuses.values()) <= {"ok"} else None

    recovered = wait_for(all_ok, timeout=20, interval=0.5, message="every check ok again")
    print(f"databases back: {check_statuses(recovered)}")
    for check in DB_CHECKS:
        assert daemon.metric("bgmock_reconciliation_check_unknown", check=check) == 0.0, check
    # nothing was ever reported violated: an outage is not a broken invariant
    assert metric_sum(daemon, "bgmock_invariant_violations_detected_total") == detections
    assert daemon.process.poll() is None


def test_ledger_database_briefly_gone_loses_nothing(world: World) -> None:
    daemon = world.daemon
    errors_before = metric_sum(daemon, "bgmock_ledger_write_errors_total")
    dropped_before = metric_sum(daemon, "bgmock_ledger_dropped_total")
    sim = start_simulation(daemon, count=40, rate=10, name="ledger-outage")
    wait_dispatched(daemon, sim, 8)

    world.ledger_proxy.cut()
    cut = time.monotonic()
    # payments keep being sent and followed: their rows wait in the buffer
    wait_for(lambda: (daemon.metric("bgmock_ledger_buffered") or 0) > 0, timeout=5,
             message="rows buffered")
    status = wait_for(lambda: (s := daemon.get("/api/v1/status").json()["payments"])
                      ["ledger"]["available"] is False and s, timeout=5,
                      message="ledger reported unavailable")
    # reads of the ledger answer 503 with a reason, never a 500
    answer = daemon.get("/api/v1/transactions", params={"simulation": sim})
    assert answer.status_code == 503, answer.text
    assert "ledger unavailable" in answer.json()["error"], answer.text
    wait_for(lambda: time.monotonic() - cut >= 4 and (daemon.metric("bgmock_ledger_buffered")
                                                     or 0) > 0,
             timeout=10, message="four seconds of outage with rows waiting")
    buffered = daemon.metric("bgmock_ledger_buffered")
    print(f"ledger gone {time.monotonic() - cut:.1f}s: {buffered:.0f} rows waiting, "
          f"status {status['ledger']}")

    world.ledger_proxy.restore()
    wait_for(lambda: daemon.get("/api/v1/status").json()["payments"]["ledger"]["available"],
             timeout=15, interval=0.2, message="ledger available again")
    wait_for(lambda: daemon.metric("bgmock_ledger_buffered") == 0.0, timeout=10,
             message="buffer drained")
    detail = wait_finished(daemon, sim, timeout=40)
    _, rows = assert_accounted(daemon, sim)
    # everything measured during the outage reached the ledger: every payment with
    # its outcome and its whole timeline
    assert len(rows) == 40 == detail["dispatched"], (len(rows), detail["dispatched"])
    # (but for a payment whose versioned write on its payer lost a race at the bank:
    # BGMock's optimistic lock, a certain 500 with nothing stored)
    lost = [r for r in rows if r["status"] == "rejected" and r["transactionId"] is None
            and r["message"].endswith(": http_500")]
    incomplete = [(r["status"], steps(r)) for r in rows if r not in lost
                  and (r["status"] != "success" or set(steps(r)) != set(FLOW))]
    assert not incomplete, incomplete
    assert detail["latency"]["total"]["count"] == 40 - len(lost), detail["latency"]
    assert metric_sum(daemon, "bgmock_ledger_write_errors_total") > errors_before
    assert metric_sum(daemon, "bgmock_ledger_dropped_total") == dropped_before == 0
    assert len(payments(daemon)) == int(metric_sum(daemon, "bgmock_payments_submitted_total"))
    print(f"after: {len(rows)} payments, all recorded; latency {detail['latency']['total']}")
