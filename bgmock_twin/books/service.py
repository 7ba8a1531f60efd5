"""``Books``: the reconciliation and consumer-lag component the daemon wires in.

Two jobs (``jobs()``, registered by the wiring), ``books_reconcile`` (every
``TWIN_RECONCILE_INTERVAL_SECONDS``) and ``books_lag`` (every
``TWIN_LAG_INTERVAL_SECONDS``); the latest report and a run on demand for the
control API (``api.books_routes``); and the export of every result:
``bgmock_invariant_violations{check}`` (current count, 0 while unknown),
``bgmock_invariant_violations_detected_total{check}`` (each new offender once),
``bgmock_reconciliation_check_unknown{check}``, the balance-drift and outbox
gauges. Each new offender is logged once with its evidence; a check that
recovers is logged once too.

In a fleet the scheduled reconciliation runs once: on the replica holding the
``books`` lease (``lease``, taken or renewed at each run for a few intervals). The
others do not run it and export none of its figures (gauges of a run they did
not make would be stale, and counted once per replica); their status and
``GET /api/v1/reconciliation`` name the replica that has the report
(``reconciled_by``), where the figures are. A run asked for through the API runs
on the replica asked, as before, and is answered without exporting figures there
unless that replica holds the lease.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.engine import Engine

from bgmock_twin import metrics
from bgmock_twin.books import checks as c
from bgmock_twin.books.accounts import AccountsView
from bgmock_twin.books.lag import GroupState, LagMonitor, LagSource
from bgmock_twin.books.model import AccountKey
from bgmock_twin.books.reconcile import ReconcileConfig, Reconciler
from bgmock_twin.books.report import Report
from bgmock_twin.books.results import CheckResult, CheckStatus
from bgmock_twin.books.sources import LedgerReader
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.logs import get_logger
from bgmock_twin.scheduler import Job
from bgmock_twin.settings import BooksSettings

log = get_logger(__name__)

LOGGED_PER_CHECK = 20  # new offenders logged one by one per run; beyond, a summary line
RECONCILE_JOB = "books_reconcile"
LAG_JOB = "books_lag"


class FleetLease(Protocol):
    """The lease of a job the fleet runs once (``tracking.singletons.FleetJob``)."""

    def claim(self) -> bool: ...

    def holder(self) -> str | None: ...

    def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BooksStatus:
    """The books' part of the daemon's status."""

    last_run: datetime | None
    status: str  # ok, violated, unknown, or pending before the first run
    checks: dict[str, CheckStatus]
    violations: int
    consumer_lag: dict[str, GroupState] | None  # None without a lag source
    reconciled_by: str | None = None  # the replica running the fleet's reconciliation


class Books:
    def __init__(
        self,
        settings: BooksSettings,
        *,
        ledger: LedgerReader | None,
        clients: BGMockClients | None,
        engines: Mapping[str, Engine],
        lag_source: LagSource | None,
        twin_accounts: Callable[[], Iterable[AccountKey]],
        lease: FleetLease | None = None,
    ) -> None:
        """``engines``: read-only engines of BGMock's databases by ``Service.database``;
        ``twin_accounts``: the accounts the twin provisioned (empty until it has);
        ``lease``: the fleet's ``books`` lease (None: this twin always runs it)."""
        self.settings = settings
        self.lease = lease
        self.twin_accounts = twin_accounts
        interval = settings.reconcile_interval_seconds
        self.reconciler = Reconciler(
            ReconcileConfig(
                budget_seconds=max(5.0, min(interval * 0.8, 25.0)),
                rest_timeout_seconds=settings.rest_timeout_seconds,
                statement_timeout_ms=settings.db_statement_timeout_ms,
                sla_seconds=settings.payment_sla_seconds,
                outbox_max_pending=settings.slo_outbox_pending,
                outbox_max_age_seconds=settings.slo_outbox_age_seconds,
            ),
            ledger=ledger,
            clients=clients,
            engines=engines,
            twin_accounts=twin_accounts,
        )
        groups = list(dict.fromkeys([*settings.lag_groups, settings.consumer_group]))
        self.lag = (LagMonitor(lag_source, groups, settings.lag_window_samples)
                    if lag_source is not None else None)
        self._run_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._latest: Report | None = None
        self._accounts: AccountsView | None = None
        self._keys: dict[str, set[str]] = {}
        self._drift_banks: set[str] = set()
        self._outbox_services: set[str] = set()
        self._account_banks: set[str] = set()
        self._exported = False  # figures of a run of this replica are exported

    @property
    def interval_seconds(self) -> float:
        return self.settings.reconcile_interval_seconds

    # --- lifecycle ----------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """What the wiring schedules: reconciliation, and lag when there is a source."""
        s = self.settings
        jobs = [Job(RECONCILE_JOB, self._scheduled_run, s.reconcile_interval_seconds)]
        if self.lag is not None:
            jobs.append(Job(LAG_JOB, self.lag.run, s.lag_interval_seconds, run_now=True))
        return jobs

    def start(self) -> None:
        log.info("books_started", reconcile_interval=self.settings.reconcile_interval_seconds,
                 lag_groups=len(self.lag.groups) if self.lag else 0)

    def stop(self) -> None:
        if self.lease is not None:
            self.lease.release()
        self.reconciler.close()
        if self.lag is not None:
            self.lag.close()

    # --- reconciliation -------------------------------------------------------------------
    def _scheduled_run(self) -> None:
        if not self._runs_here():
            return
        if not self._run_lock.acquire(blocking=False):
            return  # a run asked for through the API is going on: it is as fresh
        try:
            self._run_and_publish(export=True)
        finally:
            self._run_lock.release()

    def _runs_here(self) -> bool:
        """Whether this replica runs the fleet's reconciliation now; one that does
        not (any more) withdraws the figures of its earlier runs."""
        if self.lease is None or self.lease.claim():
            return True
        with self._state_lock:
            if self._exported:
                self._withdraw_figures()
        return False

    def run_now(self, wait_seconds: float | None = None) -> Report | None:
        """Run a reconciliation now (waiting for one in progress first); None if the
        one in progress did not end within ``wait_seconds``."""
        budget = self.reconciler.config.budget_seconds
        if not self._run_lock.acquire(timeout=wait_seconds if wait_seconds is not None
                                      else budget + 5):
            return None
        try:
            return self._run_and_publish(export=self._runs_here())
        finally:
            self._run_lock.release()

    def _run_and_publish(self, export: bool) -> Report:
        report = self.reconciler.run()
        self._publish(report, export)
        return report

    def latest(self) -> Report | None:
        with self._state_lock:
            return self._latest

    def _publish(self, report: Report, export: bool) -> None:
        with self._state_lock:
            if export:
                self._export(report)
            self._latest = report
            if report.accounts is not None:
                self._accounts = report.accounts

    def _export(self, report: Report) -> None:
        self._exported = True
        for check in c.CHECKS:
            result = report.results.get(check)
            if result is None:
                continue
            unknown = result.status is CheckStatus.UNKNOWN
            metrics.RECONCILIATION_UNKNOWN.labels(check).set(1 if unknown else 0)
            metrics.INVARIANT_VIOLATIONS.labels(check).set(len(result.violations))
            if unknown and not result.violations:
                continue  # nothing known: the offenders seen before are not forgotten
            self._track_offenders(check, result)
        self._export_figures(report)
        metrics.RECONCILIATION_LAST_RUN.set(report.ran_at.timestamp())

    def _withdraw_figures(self) -> None:
        """No figure or report of this replica's earlier runs stays once another
        replica reconciles (the detections counter keeps its count): its status
        and API then name the holder instead."""
        for gauge in (metrics.RECONCILIATION_UNKNOWN, metrics.INVARIANT_VIOLATIONS,
                      metrics.BALANCE_DRIFT, metrics.DRIFTING_ACCOUNTS, metrics.OUTBOX_PENDING,
                      metrics.OUTBOX_OLDEST_AGE, metrics.ACCOUNT_BALANCE,
                      metrics.ACCOUNT_RESERVED, metrics.ACCOUNT_BALANCE_EXPECTED_MIN,
                      metrics.ACCOUNT_BALANCE_EXPECTED_MAX):
            gauge.clear()
        self._keys = {}
        self._drift_banks, self._outbox_services, self._account_banks = set(), set(), set()
        self._latest, self._accounts = None, None
        self._exported = False

    def _track_offenders(self, check: str, result: CheckResult) -> None:
        previous = self._keys.get(check, set())
        current = {v.key for v in result.violations}
        new = [v for v in result.violations if v.key not in previous]
        if new:
            metrics.INVARIANT_DETECTIONS.labels(check).inc(len(new))
            for violation in new[:LOGGED_PER_CHECK]:
                log.warning("invariant_violated", check=check, subject=violation.subject,
                            message=violation.message, evidence=violation.evidence)
            if len(new) > LOGGED_PER_CHECK:
                log.warning("invariant_violated_more", check=check,
                            more=len(new) - LOGGED_PER_CHECK)
        if previous and not current and result.status is CheckStatus.OK:
            log.info("invariant_restored", check=check, previously=len(previous))
        self._keys[check] = current

    def _export_figures(self, report: Report) -> None:
        drift = report.results.get(c.BALANCE_DRIFT)
        banks: set[str] = set()
        if drift is not None and drift.status is not CheckStatus.SKIPPED:
            for bank, figures in (drift.drift or {}).items():
                metrics.BALANCE_DRIFT.labels(bank).set(float(figures.amount))
                metrics.DRIFTING_ACCOUNTS.labels(bank).set(figures.accounts)
                banks.add(bank)
        for bank in self._drift_banks - banks:  # unread now: no stale figure
            with contextlib.suppress(KeyError):
                metrics.BALANCE_DRIFT.remove(bank)
                metrics.DRIFTING_ACCOUNTS.remove(bank)
        self._drift_banks = banks
        outbox = report.results.get(c.OUTBOX_BACKLOG)
        services: set[str] = set()
        if outbox is not None:
            for service, backlog in (outbox.outbox or {}).items():
                metrics.OUTBOX_PENDING.labels(service).set(backlog.unpublished)
                metrics.OUTBOX_OLDEST_AGE.labels(service).set(backlog.oldest_age_seconds)
                services.add(service)
        for service in self._outbox_services - services:
            with contextlib.suppress(KeyError):
                metrics.OUTBOX_PENDING.remove(service)
                metrics.OUTBOX_OLDEST_AGE.remove(service)
        self._outbox_services = services
        self._export_accounts(report.accounts)

    def _export_accounts(self, view: AccountsView | None) -> None:
        """Per-bank sums of the banks read (account numbers are never labels); a bank
        not read, or a run without a model, leaves no stale figure."""
        banks: set[str] = set()
        totals = view.totals() if view is not None else {}
        for bank in view.banks_read if view is not None else ():
            figures = totals[bank]
            metrics.ACCOUNT_BALANCE.labels(bank).set(float(figures.balance))
            metrics.ACCOUNT_RESERVED.labels(bank).set(float(figures.reserved))
            metrics.ACCOUNT_BALANCE_EXPECTED_MIN.labels(bank).set(float(figures.expected.lo))
            metrics.ACCOUNT_BALANCE_EXPECTED_MAX.labels(bank).set(float(figures.expected.hi))
            banks.add(bank)
        for bank in self._account_banks - banks:
            for gauge in (metrics.ACCOUNT_BALANCE, metrics.ACCOUNT_RESERVED,
                          metrics.ACCOUNT_BALANCE_EXPECTED_MIN,
                          metrics.ACCOUNT_BALANCE_EXPECTED_MAX):
                with contextlib.suppress(KeyError):
                    gauge.remove(bank)
        self._account_banks = banks

    # --- views ------------------------------------------------------------------------------
    def accounts(self) -> AccountsView | None:
        """The accounts as the latest reconciliation that modelled them saw them."""
        with self._state_lock:
            return self._accounts

    def status(self) -> BooksStatus:
        latest = self.latest()
        return BooksStatus(
            last_run=latest.ran_at if latest else None,
            status=latest.status if latest else "pending",
            checks={name: result.status for name, result in latest.results.items()}
            if latest else {},
            violations=latest.violations if latest else 0,
            consumer_lag=self.lag.states() if self.lag is not None else None,
            reconciled_by=self.reconciled_by(),
        )

    def reconciled_by(self) -> str | None:
        """The replica that runs the fleet's reconciliation (None for a twin that is
        not part of a fleet, or before the first run)."""
        return self.lease.holder() if self.lease is not None else None
