"""The books against the embedded emulator on PostgreSQL (its real tables) and a real
broker (Tansu), inside a real daemon with steady background load.

A clean run reports no violation at all; each injected books fault lights up
exactly the check meant for it within one reconciliation, with the evidence in
the report; the control API serves the report and runs one on demand (token).
The faults run in order (the dropped outbox row is never repaired, so it is last).
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY

from bgmock_twin.app import Twin
from bgmock_twin.books import checks as c
from bgmock_twin.books.service import Books
from bgmock_twin.settings import load_settings
from bgmock_twin.tracking.lifecycle import Channel, Kind, Payment
from bgmock_twin.tracking.service import Tracking
from tests.support.broker import TansuBroker
from tests.support.ports import free_port, wait_for
from tests.support.postgres import PostgresServer
from tests.support.twins import api_url, running_twin

TOKEN = "books-test-token"
RECONCILE_INTERVAL = 2.0
OUTBOX_AGE_LIMIT = 3.0


@pytest.fixture(scope="module")
def twin(kafka_broker: TansuBroker, postgres: PostgresServer,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    dbs = {name: postgres.create_database() for name in ("bank_a", "bank_b", "clearing")}
    tmp = tmp_path_factory.mktemp("books-emulator")
    settings = load_settings(
        mode="embedded",
        kafka_bootstrap_servers=kafka_broker.bootstrap,
        kafka_session_timeout_ms=6000,
        emulator_db_bank_a=dbs["bank_a"], emulator_db_bank_b=dbs["bank_b"],
        emulator_db_switch=dbs["clearing"],
        # the checks read the emulator's databases through their own read-only engines
        db_bank_a=dbs["bank_a"], db_bank_b=dbs["bank_b"], db_switch=dbs["clearing"],
        emulator_outbox_interval_seconds=0.2,
        twin_database_url=f"sqlite:///{tmp}/twin.db",
        instance_id="books-emulator",
        listen_port=free_port(),
        control_token=TOKEN,
        load_rate_per_second=4,
        reconcile_interval_seconds=RECONCILE_INTERVAL,
        lag_interval_seconds=1,
        health_interval_seconds=5,
        db_statement_timeout_ms=1000,
        slo_outbox_age_seconds=OUTBOX_AGE_LIMIT,
        payment_sla_seconds=120,
    )
    with running_twin(settings, following=True, timeout=60, interval=0.1) as daemon:
        assert isinstance(daemon.books, Books)
        assert daemon.tracking is not None
        yield daemon


def _violated(report: dict[str, Any]) -> set[str]:
    return {name for name, check in report["checks"].items() if check["status"] == "violated"}


def _run(twin: Twin) -> dict[str, Any]:
    response = requests.post(api_url(twin) + "/api/v1/reconciliation/run",
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_for_report(twin: Twin, condition: Any, timeout: float = 30) -> dict[str, Any]:
    """Poll the scheduled reports (GET) until ``condition(report)`` holds."""
    def check() -> dict[str, Any] | None:
        body: dict[str, Any] = requests.get(api_url(twin) + "/api/v1/reconciliation",
                                            timeout=10).json()
        return body if body["ranAt"] and condition(body) else None

    result: dict[str, Any] = wait_for(check, timeout=timeout, interval=0.2,
                                      message="reconciliation report")
    return result


def _detections(check: str) -> float:
    return REGISTRY.get_sample_value("bgmock_invariant_violations_detected_total",
                                     {"check": check}) or 0.0


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _accepted(tracking: Tracking, **payment: Any) -> Payment:
    """One payment the source bank accepted. Under the background load BGMock's
    optimistic lock may refuse one (a 500, nothing stored: a certain rejection that
    moves no money); only that refusal is a reason to send another."""
    for _ in range(5):
        sent = tracking.submit_one(**payment)
        if sent.transaction_id is not None:
            return sent
        assert sent.status == "rejected" and (sent.message or "").endswith(": http_500"), sent
    raise AssertionError("five payments in a row lost BGMock's optimistic-lock race")


def test_clean_books_under_load_have_no_violation(twin: Twin) -> None:
    tracking = twin.tracking
    assert tracking is not None
    # besides the steady REST load: Kafka-channel money from outside, and failures
    tracking.submit_one(channel=Channel.KAFKA, amount=Decimal("12.34"))
    tracking.submit_one(channel=Channel.KAFKA, kind=Kind.UNKNOWN_PAYEE_ACCOUNT)
    tracking.submit_one(kind=Kind.UNKNOWN_BANKGOOD)
    tracking.submit_one(kind=Kind.INSUFFICIENT_FUNDS)
    wait_for(lambda: sum(tracking.tracker.counted.values()) >= 12, timeout=30,
             message="a dozen payments finished")
    for _ in range(2):
        report = _run(twin)
        assert report["violations"] == 0, report
        assert report["status"] == "ok", report
    assert set(report["checks"]) == set(c.CHECKS)
    assert all(check["status"] == "ok" for check in report["checks"].values())
    assert report["checks"]["balance_drift"]["detail"]["drift"] == {"bank_a": "0",
                                                                     "bank_b": "0"}
    assert all(state == "ok" for state in report["sources"].values()), report["sources"]
    for check in c.CHECKS:
        assert _gauge("bgmock_invariant_violations", check=check) == 0
        assert _gauge("bgmock_reconciliation_check_unknown", check=check) == 0
    for bank in ("bank_a", "bank_b"):
        assert _gauge("bgmock_balance_drift", bank=bank) == 0
    for service in ("bank_a", "bank_b", "clearing"):
        assert _gauge("bgmock_outbox_pending", service=service) is not None
    # the scheduled job reports too, and the status summary carries it
    _wait_for_report(twin, lambda r: r["status"] == "ok")
    books = twin.status().books
    assert books is not None and books.status == "ok"
    # the lag of every group is exported and never negative
    groups = [*twin.settings.lag_groups, twin.settings.consumer_group]

    def progress_of_every_group() -> bool:
        # the twin's own state: the gauges are process-wide (other tests set them too)
        books = twin.status().books
        lag = books.consumer_lag if books is not None else None
        return lag is not None and all(lag[g].last_progress is not None for g in groups) \
            and all(_gauge("bgmock_kafka_consumer_last_progress_timestamp_seconds", group=g)
                    is not None for g in groups)

    wait_for(progress_of_every_group, timeout=20, message="lag of every group")
    lags = [sample for family in REGISTRY.collect() if family.name == "bgmock_kafka_consumer_lag"
            for sample in family.samples]
    assert {s.labels["group"] for s in lags} >= set(groups) - {twin.settings.consumer_group}
    assert all(s.value >= 0 for s in lags)
    # every default group (the real names, the clearing's two included) exists in the
    # emulator and is judged; the status answer carries the judgement
    body = requests.get(api_url(twin) + "/api/v1/status", timeout=10).json()
    consumer_lag = body["books"]["consumerLag"]
    for group in twin.settings.lag_groups:
        state = consumer_lag[group]
        assert state["committedOffsets"] is True, (group, state)
        assert state["status"] in {"OK", "UNKNOWN", "WARN", "STALL", "STOP"}, (group, state)
        assert all(age >= 0 for age in state["lagSeconds"].values()), (group, state)
        assert _gauge("bgmock_kafka_consumer_group_missing", group=group) == 0
    assert {"clearing-service-initiated", "clearing-service-processed"} <= set(consumer_lag)


def test_run_needs_the_token_and_get_is_open(twin: Twin) -> None:
    assert requests.post(api_url(twin) + "/api/v1/reconciliation/run", timeout=10).status_code \
        == 401
    assert requests.post(api_url(twin) + "/api/v1/reconciliation/run", timeout=10,
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
    body = requests.get(api_url(twin) + "/api/v1/reconciliation", timeout=10).json()
    assert body["intervalSeconds"] == RECONCILE_INTERVAL
    paths = requests.get(api_url(twin) + "/openapi.json", timeout=10).json()["paths"]
    assert "/api/v1/reconciliation" in paths and "/api/v1/reconciliation/run" in paths


def test_corrupted_balance_is_balance_drift(twin: Twin) -> None:
    emulator = twin.emulator
    assert emulator is not None
    before = {check: _detections(check) for check in c.CHECKS}
    account = "TWIN-B-002"
    # money moved between two twin accounts behind the twin's back: drift, conserved
    emulator.faults.corrupt_balance("bank_b", account, Decimal("7.25"))
    emulator.faults.corrupt_balance("bank_b", "TWIN-B-003", Decimal("-7.25"))
    try:
        report = _wait_for_report(twin, lambda r: c.BALANCE_DRIFT in _violated(r),
                                  timeout=RECONCILE_INTERVAL * 2 + 15)
        assert _violated(report) == {c.BALANCE_DRIFT}, report
        offending = report["checks"][c.BALANCE_DRIFT]["offending"]
        assert {o["evidence"]["account"]: o["evidence"]["drift"] for o in offending} == {
            account: "7.25", "TWIN-B-003": "7.25"}
        assert _gauge("bgmock_balance_drift", bank="bank_b") == 14.5
        assert _gauge("bgmock_balance_drifting_accounts", bank="bank_b") == 2
        assert _gauge("bgmock_invariant_violations", check=c.BALANCE_DRIFT) == 2
        assert _detections(c.BALANCE_DRIFT) - before[c.BALANCE_DRIFT] == 2
        # money from nowhere: drift, and the books no longer add up
        emulator.faults.corrupt_balance("bank_b", "TWIN-B-003", Decimal("7.25"))
        report = _wait_for_report(twin, lambda r: c.CONSERVATION in _violated(r),
                                  timeout=RECONCILE_INTERVAL * 2 + 15)
        assert _violated(report) == {c.BALANCE_DRIFT, c.CONSERVATION}, report
        conservation = report["checks"][c.CONSERVATION]["offending"][0]
        assert conservation["evidence"]["difference"] == "7.25"
        # one offender seen run after run is one detection
        assert _detections(c.BALANCE_DRIFT) - before[c.BALANCE_DRIFT] == 2
    finally:
        emulator.faults.corrupt_balance("bank_b", account, Decimal("-7.25"))
    report = _wait_for_report(twin, lambda r: r["status"] == "ok",
                              timeout=RECONCILE_INTERVAL * 2 + 15)
    assert _gauge("bgmock_balance_drift", bank="bank_b") == 0
    others = {check for check in c.CHECKS if check not in (c.BALANCE_DRIFT, c.CONSERVATION)}
    assert all(_detections(check) == before[check] for check in others)


def test_stalled_outbox_is_outbox_backlog(twin: Twin) -> None:
    emulator = twin.emulator
    assert emulator is not None
    before = {check: _detections(check) for check in c.CHECKS}
    emulator.faults.stall_outbox("bank_a", True)
    try:
        report = _wait_for_report(twin, lambda r: c.OUTBOX_BACKLOG in _violated(r),
                                  timeout=OUTBOX_AGE_LIMIT + RECONCILE_INTERVAL * 2 + 15)
        assert _violated(report) == {c.OUTBOX_BACKLOG}, report
        (offender,) = report["checks"][c.OUTBOX_BACKLOG]["offending"]
        assert offender["evidence"]["service"] == "bank_a"
        assert offender["evidence"]["unpublished"] >= 1
        assert offender["evidence"]["oldestAgeSeconds"] > OUTBOX_AGE_LIMIT
        age = _gauge("bgmock_outbox_oldest_age_seconds", service="bank_a")
        assert age is not None and age > OUTBOX_AGE_LIMIT
    finally:
        emulator.faults.stall_outbox("bank_a", False)
    _wait_for_report(twin, lambda r: r["status"] == "ok", timeout=RECONCILE_INTERVAL * 2 + 20)
    assert _detections(c.OUTBOX_BACKLOG) - before[c.OUTBOX_BACKLOG] == 1
    assert all(_detections(check) == before[check] for check in c.CHECKS
               if check != c.OUTBOX_BACKLOG)


def test_dropped_outbox_row_is_outbox_integrity(twin: Twin) -> None:
    """Last in the module: the lost event is never repaired (its payment stays
    PENDING with its amount reserved, as in the real BGMock)."""
    emulator, tracking = twin.emulator, twin.tracking
    assert emulator is not None and tracking is not None
    before = {check: _detections(check) for check in c.CHECKS}
    emulator.faults.stall_outbox("bank_b", True)
    try:
        payment = _accepted(tracking, from_bank="b", amount=Decimal("3.21"))
        # the oldest unpublished row goes first: the background load's may be older
        lost: set[str] = set()
        dropped: dict[str, Any] | None = None
        while dropped is None or dropped["transactionId"] != str(payment.transaction_id):
            dropped = emulator.faults.drop_outbox_row("bank_b")
            assert dropped is not None, "the payment's outbox row was not found"
            if dropped["topic"] == "transactions.initiated":
                lost.add(dropped["transactionId"])
    finally:
        emulator.faults.stall_outbox("bank_b", False)
    report = _wait_for_report(twin, lambda r: c.OUTBOX_INTEGRITY in _violated(r),
                              timeout=RECONCILE_INTERVAL * 2 + 15)
    assert _violated(report) == {c.OUTBOX_INTEGRITY}, report
    offending = report["checks"][c.OUTBOX_INTEGRITY]["offending"]
    assert {o["evidence"]["transactionId"] for o in offending} == lost
    (offender,) = [o for o in offending
                   if o["evidence"]["transactionId"] == str(payment.transaction_id)]
    assert offender["evidence"]["service"] == "bank_b"
    assert offender["evidence"]["amount"] == "3.21"
    assert _detections(c.OUTBOX_INTEGRITY) - before[c.OUTBOX_INTEGRITY] == len(lost)
    # the stuck payment is simply unfinished for the balance model: no drift
    assert report["checks"][c.BALANCE_DRIFT]["status"] == "ok"
    assert report["checks"][c.RESERVED_MATCHES_PENDING]["status"] == "ok"
