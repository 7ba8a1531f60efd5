"""``Books(twin)``: the reconciliation and consumer-lag component the daemon wires in.

Two scheduled jobs, ``books_reconcile`` (every ``TWIN_RECONCILE_INTERVAL_SECONDS``)
and ``books_lag`` (every ``TWIN_LAG_INTERVAL_SECONDS``); the control API routes
``GET /api/v1/reconciliation`` (the latest report) and ``POST
/api/v1/reconciliation/run`` (run now, bearer token); and the export of every
result: ``bgmock_invariant_violations{check}`` (current count, 0 while unknown),
``bgmock_invariant_violations_detected_total{check}`` (each new offender once),
``bgmock_reconciliation_check_unknown{check}``, the balance-drift and outbox
gauges. Each new offender is logged once with its evidence; a check that
recovers is logged once too.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bgmock_twin import metrics
from bgmock_twin.books import checks as c
from bgmock_twin.books.checks import CheckStatus
from bgmock_twin.books.lag import LagMonitor, lag_source_for
from bgmock_twin.books.model import AccountKey
from bgmock_twin.books.reconcile import ReconcileConfig, Reconciler, Report
from bgmock_twin.books.sources import LedgerReader, bank_of
from bgmock_twin.logs import get_logger

if TYPE_CHECKING:
    from fastapi import APIRouter

log = get_logger(__name__)

LOGGED_PER_CHECK = 20  # new offenders logged one by one per run; beyond, a summary line


class Books:
    def __init__(self, twin: Any) -> None:
        settings = twin.settings
        self.settings = settings
        self.scheduler = twin.scheduler
        tracking = getattr(twin, "tracking", None)
        self.tracking = tracking
        ledger = getattr(tracking, "ledger", None) if tracking is not None else None
        reader = None
        if ledger is not None:
            from bgmock_twin.tracking.ledger import deposits, payments

            reader = LedgerReader(ledger.engine, payments, deposits, flush=ledger.flush)
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
            ledger=reader,
            clients=getattr(twin, "clients", None),
            engines=getattr(twin, "databases", {}) or {},
            twin_accounts=self._twin_accounts,
        )
        groups = list(dict.fromkeys([*settings.lag_groups, settings.consumer_group]))
        source = lag_source_for(getattr(twin, "bus", None), settings.kafka_bootstrap_servers,
                                timeout=max(1.0, min(5.0, settings.lag_interval_seconds / 2)))
        self.lag = LagMonitor(source, groups) if source is not None else None
        self._run_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._latest: Report | None = None
        self._keys: dict[str, set[str]] = {}
        self._drift_banks: set[str] = set()
        self._outbox_services: set[str] = set()
        self._router: APIRouter | None = None
        self._started = False

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self.scheduler.add_interval("books_reconcile", self._scheduled_run,
                                    s.reconcile_interval_seconds)
        if self.lag is not None:
            self.scheduler.add_interval("books_lag", self.lag.run, s.lag_interval_seconds,
                                        run_now=True)
        self._started = True
        log.info("books_started", reconcile_interval=s.reconcile_interval_seconds,
                 lag_groups=len(self.lag.groups) if self.lag else 0)

    def stop(self) -> None:
        for job in ("books_reconcile", "books_lag"):
            with contextlib.suppress(Exception):  # the scheduler may be shut down already
                self.scheduler.remove(job)
        self.reconciler.close()
        if self.lag is not None:
            self.lag.close()

    # --- reconciliation -------------------------------------------------------------------
    def _twin_accounts(self) -> Iterable[AccountKey]:
        provisioner = getattr(self.tracking, "provisioner", None)
        fixtures = getattr(provisioner, "fixtures", None)
        if fixtures is None:
            return []
        accounts = [AccountKey(bank_of(clearing), number)
                    for clearing, numbers in fixtures.payers.items() for number in numbers]
        accounts += [AccountKey(bank_of(clearing), number)
                     for clearing, number in fixtures.low_accounts.items()]
        return accounts

    def _scheduled_run(self) -> None:
        if not self._run_lock.acquire(blocking=False):
            return  # a run asked for through the API is going on: it is as fresh
        try:
            self._run_and_publish()
        finally:
            self._run_lock.release()

    def run_now(self, wait_seconds: float | None = None) -> Report | None:
        """Run a reconciliation now (waiting for one in progress first); None if the
        one in progress did not end within ``wait_seconds``."""
        budget = self.reconciler.config.budget_seconds
        if not self._run_lock.acquire(timeout=wait_seconds if wait_seconds is not None
                                      else budget + 5):
            return None
        try:
            return self._run_and_publish()
        finally:
            self._run_lock.release()

    def _run_and_publish(self) -> Report:
        report = self.reconciler.run()
        self._publish(report)
        return report

    def latest(self) -> Report | None:
        with self._state_lock:
            return self._latest

    def _publish(self, report: Report) -> None:
        with self._state_lock:
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
            self._latest = report

    def _track_offenders(self, check: str, result: c.CheckResult) -> None:
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
            for bank, amount in (drift.detail.get("drift") or {}).items():
                metrics.BALANCE_DRIFT.labels(bank).set(float(amount))
                banks.add(bank)
            for bank, count in (drift.detail.get("drifting_accounts") or {}).items():
                metrics.DRIFTING_ACCOUNTS.labels(bank).set(count)
        for bank in self._drift_banks - banks:  # unread now: no stale figure
            with contextlib.suppress(KeyError):
                metrics.BALANCE_DRIFT.remove(bank)
                metrics.DRIFTING_ACCOUNTS.remove(bank)
        self._drift_banks = banks
        outbox = report.results.get(c.OUTBOX_BACKLOG)
        services: set[str] = set()
        if outbox is not None:
            for service, figures in (outbox.detail.get("services") or {}).items():
                metrics.OUTBOX_PENDING.labels(service).set(figures["unpublished"])
                metrics.OUTBOX_OLDEST_AGE.labels(service).set(figures["oldest_age_seconds"])
                services.add(service)
        for service in self._outbox_services - services:
            with contextlib.suppress(KeyError):
                metrics.OUTBOX_PENDING.remove(service)
                metrics.OUTBOX_OLDEST_AGE.remove(service)
        self._outbox_services = services

    # --- views ------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        latest = self.latest()
        if latest is None:
            return {"ran_at": None, "status": "pending", "violations": 0, "checks": {},
                    "sources": {},
                    "interval_seconds": self.settings.reconcile_interval_seconds}
        body = latest.as_dict()
        body["interval_seconds"] = self.settings.reconcile_interval_seconds
        return body

    def status(self) -> dict[str, Any]:
        latest = self.latest()
        summary: dict[str, Any] = {
            "last_run": latest.ran_at.isoformat() if latest else None,
            "status": latest.status if latest else "pending",
            "checks": {name: result.status.value for name, result in latest.results.items()}
            if latest else {},
            "violations": sum(len(r.violations) for r in latest.results.values())
            if latest else 0,
        }
        if self.lag is not None:
            summary["consumer_lag"] = self.lag.status()["groups"]
        return summary

    @property
    def router(self) -> APIRouter:
        if self._router is None:
            self._router = _build_router(self)
        return self._router


def _build_router(books: Books) -> APIRouter:
    from fastapi import APIRouter, Depends, HTTPException

    from bgmock_twin.api.auth import require_token

    router = APIRouter(tags=["reconciliation"])

    @router.get("/api/v1/reconciliation",
                summary="The latest reconciliation: each check's status (ok, violated, "
                "unknown, skipped) with the offending payments and accounts")
    def reconciliation() -> dict[str, Any]:
        return books.report()

    @router.post("/api/v1/reconciliation/run", dependencies=[Depends(require_token)],
                 summary="Run a reconciliation now and return its report",
                 responses={503: {"description": "a run in progress did not finish in time"}})
    def run_reconciliation() -> dict[str, Any]:
        report = books.run_now()
        if report is None:
            raise HTTPException(status_code=503, detail="a reconciliation is still running")
        return books.report()

    return router
