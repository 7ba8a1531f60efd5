"""The books inside a real daemon with the embedded emulator on the in-process bus:
consumer lag rises exactly when a group stops and falls when it resumes; a hung
database makes its checks "unknown" (never violated) without holding up any other
job or the metrics endpoint; and the REST path finds drift when no database is
configured."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY

from bgmock_twin.app import Twin
from bgmock_twin.books import checks as c
from bgmock_twin.books.checks import CheckStatus
from bgmock_twin.books.reconcile import CHANGED_MARGIN, ReconcileConfig, Reconciler
from bgmock_twin.books.sources import LedgerReader
from bgmock_twin.bus.memory import InMemoryBus
from bgmock_twin.contract import TOPIC_FORWARDED
from bgmock_twin.emulator.embedded import bank_groups
from bgmock_twin.settings import load_settings
from bgmock_twin.tracking import ledger as ledger_tables
from tests.support.blackhole import Blackhole
from tests.support.ports import free_port, wait_for
from tests.support.twins import books_of, running_twin

FORWARDED_B = bank_groups("02")[0]


@pytest.fixture(scope="module")
def hole() -> Iterator[Blackhole]:
    blackhole = Blackhole()
    try:
        yield blackhole
    finally:
        blackhole.close()


@pytest.fixture(scope="module")
def twin(hole: Blackhole, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twin]:
    tmp = tmp_path_factory.mktemp("books-daemon")
    settings = load_settings(
        mode="embedded",
        emulator_outbox_interval_seconds=0.05,
        # the clearing's database as the checks see it: accepts, never answers
        db_switch=f"postgresql://nobody@127.0.0.1:{hole.port}/clearing",
        probe_timeout_seconds=10,
        health_interval_seconds=1,
        twin_database_url=f"sqlite:///{tmp}/twin.db",
        instance_id="books-daemon",
        listen_port=free_port(),
        load_rate_per_second=0,
        reconcile_interval_seconds=3600,  # runs only when a test asks
        lag_interval_seconds=1,
    )
    with running_twin(settings, timeout=30) as daemon:
        yield daemon


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _job_runs(job: str) -> float:
    return REGISTRY.get_sample_value("bgmock_scheduler_job_runs_total",
                                     {"task": job, "result": "success"}) or 0.0


def test_lag_rises_exactly_while_a_group_is_paused_and_falls_after(twin: Twin) -> None:
    bus, emulator, tracking = twin.bus, twin.emulator, twin.tracking
    assert isinstance(bus, InMemoryBus) and emulator is not None and tracking is not None
    books = books_of(twin)
    assert books.lag is not None

    def forwarded_lag() -> float | None:
        return _gauge("bgmock_kafka_consumer_lag", group=FORWARDED_B, topic=TOPIC_FORWARDED)

    def caught_up() -> bool:
        # read on the bus itself: the gauge is process-wide, and another test's twin
        # watching a group of the same name may have left it at 0
        committed = sum(bus.committed(FORWARDED_B, TOPIC_FORWARDED).values())
        return 0 < committed == sum(bus.end_offsets(TOPIC_FORWARDED).values())

    tracking.submit_one(from_bank="a")  # the group commits something: its lag exists
    wait_for(caught_up, timeout=10, message="no lag before the pause")
    books.lag.run()
    assert forwarded_lag() == 0
    emulator.faults.pause_consumers("bank_b")
    try:
        time.sleep(0.3)  # a batch being handled when the pause came is committed
        committed = sum(bus.committed(FORWARDED_B, TOPIC_FORWARDED).values())
        ends = sum(bus.end_offsets(TOPIC_FORWARDED).values())
        assert committed == ends
        stalled_since = _gauge("bgmock_kafka_consumer_last_progress_timestamp_seconds",
                               group=FORWARDED_B)
        for _ in range(5):
            tracking.submit_one(from_bank="a", amount=Decimal("1.00"))
        wait_for(lambda: sum(bus.end_offsets(TOPIC_FORWARDED).values()) == ends + 5,
                 timeout=10, message="five payments forwarded")
        result = books.lag.run()[FORWARDED_B]
        assert result.lag[TOPIC_FORWARDED] == 5
        assert forwarded_lag() == 5
        time.sleep(1.2)
        books.lag.run()
        assert _gauge("bgmock_kafka_consumer_last_progress_timestamp_seconds",
                      group=FORWARDED_B) == stalled_since  # no progress while stopped
    finally:
        emulator.faults.resume_consumers("bank_b")
    wait_for(lambda: forwarded_lag() == 0, timeout=10, message="lag falls after resume")
    progress = _gauge("bgmock_kafka_consumer_last_progress_timestamp_seconds", group=FORWARDED_B)
    assert progress is not None and stalled_since is not None and progress > stalled_since


def test_a_hung_database_is_unknown_and_holds_up_nothing(twin: Twin) -> None:
    books = books_of(twin)
    # the budget follows the interval (up to 25 s); shorter here than the 10 s the
    # hung connection takes to fail, so the run must give up on it
    budget = 3.0
    books.reconciler.config = dataclasses.replace(books.reconciler.config,
                                                  budget_seconds=budget)
    deadlines_before = _job_runs("tracking_deadlines")
    metrics_latency: list[float] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            started = time.monotonic()
            requests.get(f"http://127.0.0.1:{twin.api.port}/metrics", timeout=10)  # type: ignore[union-attr]
            metrics_latency.append(time.monotonic() - started)
            stop.wait(0.2)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        started = time.monotonic()
        response = requests.post(
            f"http://127.0.0.1:{twin.api.port}/api/v1/reconciliation/run",  # type: ignore[union-attr]
            timeout=60)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        scraper.join(15)
    assert response.status_code == 200
    report: dict[str, Any] = response.json()
    assert elapsed < budget + 3
    assert report["sources"]["db_switch"] == "timeout"
    for check in (c.STATUS_AGREEMENT, c.OUTBOX_BACKLOG, c.OUTBOX_INTEGRITY, c.STALE_PENDING):
        assert report["checks"][check]["status"] == "unknown", check
        assert _gauge("bgmock_reconciliation_check_unknown", check=check) == 1
        assert _gauge("bgmock_invariant_violations", check=check) == 0
    assert report["violations"] == 0
    # what the banks' databases could answer was still checked
    assert report["checks"][c.BALANCE_DRIFT]["status"] == "ok"
    assert report["checks"][c.CONSERVATION]["status"] == "ok"
    # other jobs and the metrics endpoint went on meanwhile
    assert _job_runs("tracking_deadlines") - deadlines_before >= budget - 2
    assert metrics_latency and max(metrics_latency) < 1.0
    # the hung read is not piled onto: the next run says so at once
    started = time.monotonic()
    again = books.run_now()
    assert again is not None and time.monotonic() - started < 3
    assert again.sources["db_switch"].startswith("busy")
    assert again.results[c.OUTBOX_BACKLOG].status is CheckStatus.UNKNOWN


def test_rest_path_finds_drift_without_any_database(twin: Twin) -> None:
    """External mode without DB_*: balances through GET /bank/account/{n} only."""
    tracking, emulator = twin.tracking, twin.emulator
    assert tracking is not None and emulator is not None
    tracking.submit_one(from_bank="b", amount=Decimal("2.50"))
    wait_for(lambda: tracking.tracker.counts().in_flight == 0, timeout=15,
             message="quiet books")
    # a ledger row written within a second of the reads counts as "may be anywhere";
    # without a bank journal to pin it, that is a range: let the last one age out
    time.sleep(CHANGED_MARGIN.total_seconds() + 0.1)
    reconciler = Reconciler(
        ReconcileConfig(budget_seconds=5, rest_timeout_seconds=2, statement_timeout_ms=500,
                        sla_seconds=30, outbox_max_pending=100, outbox_max_age_seconds=30),
        ledger=LedgerReader(tracking.ledger.engine, ledger_tables.payments,
                            ledger_tables.deposits, flush=tracking.ledger.flush),
        clients=twin.clients, engines={}, twin_accounts=books_of(twin).twin_accounts,
    )
    try:
        clean = reconciler.run()
        assert clean.results[c.BALANCE_DRIFT].status is CheckStatus.OK, clean
        assert clean.results[c.CONSERVATION].status is CheckStatus.OK
        assert clean.sources["rest_bank_a"] == "ok" and clean.sources["rest_bank_b"] == "ok"
        for check in (c.OUTBOX_BACKLOG, c.STATUS_AGREEMENT, c.RESERVED_MATCHES_PENDING):
            assert clean.results[check].status is CheckStatus.SKIPPED
        emulator.faults.corrupt_balance("bank_a", "TWIN-A-001", Decimal("-0.01"))
        try:
            drifted = reconciler.run()
        finally:
            emulator.faults.corrupt_balance("bank_a", "TWIN-A-001", Decimal("0.01"))
        (violation,) = drifted.results[c.BALANCE_DRIFT].violations
        assert violation.evidence["source"] == "rest"
        assert violation.evidence["drift"] == "0.01"
        assert drifted.results[c.CONSERVATION].status is CheckStatus.VIOLATED
    finally:
        reconciler.close()
