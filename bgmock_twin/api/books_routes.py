"""The reconciliation routes and the ``books`` section of ``/api/v1/status``: the
books' typed results rendered in the API's one casing (camelCase).

``GET /api/v1/reconciliation`` is the latest report; ``POST
/api/v1/reconciliation/run`` (bearer token) runs one now and answers with it, or
503 when a run in progress did not end in time. Check names, bank and service
names stay as they are: they are data (metric labels), not field names.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from pydantic.alias_generators import to_camel

from bgmock_twin.api.accounts_routes import build_accounts_router
from bgmock_twin.api.auth import require_token
from bgmock_twin.books.report import Report
from bgmock_twin.books.results import CHECKS, EVIDENCE_LIMIT, CheckResult, Violation, money
from bgmock_twin.books.service import Books, BooksStatus

NESTED_FIELDS = ("mapping",)  # evidence values that are records themselves


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel,
                              serialize_by_alias=True)


class Offender(_Out):
    subject: str = Field(description="the account, payment or service at fault")
    message: str
    evidence: dict[str, Any] = Field(description="what was expected and what was found")


class CheckBody(_Out):
    status: str = Field(description="ok, violated, unknown or skipped")
    violations: int
    reason: str | None = Field(None, description="why unknown or skipped (absent otherwise)")
    detail: dict[str, Any] | None = Field(None, description="the check's figures, if any")
    offending: list[Offender] = Field(description=f"the first {EVIDENCE_LIMIT} violations")

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body: dict[str, Any] = handler(self)
        for name in ("reason", "detail"):
            if body.get(name) is None:
                body.pop(name, None)
        return body


class ReconciliationBody(_Out):
    ran_at: str | None = Field(description="ISO 8601, UTC; null before the first run")
    duration_seconds: float | None = None
    status: str = Field(description="ok, violated, unknown, or pending before the first run")
    violations: int
    checks: dict[str, CheckBody] = Field(description="by check name")
    sources: dict[str, str] = Field(description="each data source's read: ok, timeout, ...")
    clock_offsets_seconds: dict[str, float] = Field(
        default_factory=dict, description="each service's clock minus the twin's")
    interval_seconds: float
    reconciled_by: str | None = Field(
        None, description="the replica that runs the fleet's reconciliation (its report "
        "and figures are there); null before the first run")


class GroupLagBody(_Out):
    lag: dict[str, int] | None = Field(description="by topic; null until read")
    last_progress: float | None = Field(description="unix time the group last moved")
    error: str | None
    committed_offsets: bool = Field(description="false: the group never committed")
    status: str = Field(description="OK, UNKNOWN, WARN, STALL, STOP, MISSING or ERR: "
                                    "Burrow-style, over the group's window of readings")
    lag_seconds: dict[str, float] | None = Field(
        default=None, description="by topic: age of the oldest unconsumed event")


class BooksStatusBody(_Out):
    last_run: str | None
    status: str
    checks: dict[str, str]
    violations: int
    consumer_lag: dict[str, GroupLagBody] | None = None
    reconciled_by: str | None = Field(
        None, description="the replica that runs the fleet's reconciliation (its report "
        "and figures are there); null before the first run")

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body: dict[str, Any] = handler(self)
        for absent in ("consumerLag", "reconciledBy"):  # no lag source; not in a fleet
            if body.get(absent) is None:
                body.pop(absent, None)
        return body


# --- rendering (pure) ----------------------------------------------------------------------
def _camel_keys(record: dict[str, Any]) -> dict[str, Any]:
    return {to_camel(key): value for key, value in record.items()}


def evidence_body(evidence: dict[str, Any]) -> dict[str, Any]:
    body = _camel_keys(evidence)
    for name in NESTED_FIELDS:
        value = body.get(name)
        if isinstance(value, dict):
            body[name] = _camel_keys(value)
    return body


def detail_body(result: CheckResult) -> dict[str, Any] | None:
    body: dict[str, Any] = {}
    if result.drift is not None:
        body["drift"] = {bank: money(d.amount) for bank, d in result.drift.items()}
        body["driftingAccounts"] = {bank: d.accounts for bank, d in result.drift.items()}
    if result.outbox is not None:
        body["services"] = {service: {"unpublished": f.unpublished,
                                      "oldestAgeSeconds": f.oldest_age_seconds}
                            for service, f in result.outbox.items()}
    body.update(_camel_keys(result.figures))
    return body or None


def _offender(violation: Violation) -> Offender:
    return Offender(subject=violation.subject, message=violation.message,
                    evidence=evidence_body(violation.evidence))


def check_body(result: CheckResult) -> CheckBody:
    return CheckBody(status=result.status.value, violations=len(result.violations),
                     reason=result.reason or None, detail=detail_body(result),
                     offending=[_offender(v) for v in result.violations[:EVIDENCE_LIMIT]])


def reconciliation_body(report: Report | None, interval_seconds: float,
                        reconciled_by: str | None = None) -> ReconciliationBody:
    if report is None:
        return ReconciliationBody(ran_at=None, status="pending", violations=0, checks={},
                                  sources={}, interval_seconds=interval_seconds,
                                  reconciled_by=reconciled_by)
    return ReconciliationBody(
        ran_at=report.ran_at.isoformat(),
        duration_seconds=round(report.duration_seconds, 3),
        status=report.status,
        violations=report.violations,
        checks={name: check_body(report.results[name]) for name in CHECKS
                if name in report.results},
        sources=dict(sorted(report.sources.items())),
        clock_offsets_seconds={service: round(offset.total_seconds(), 3)
                               for service, offset in sorted(report.clock_offsets.items())},
        interval_seconds=interval_seconds,
        reconciled_by=reconciled_by,
    )


def books_status_body(status: BooksStatus) -> BooksStatusBody:
    """The ``books`` section of ``/api/v1/status``."""
    lag = None if status.consumer_lag is None else {
        group: GroupLagBody(lag=state.lag, last_progress=state.last_progress,
                            error=state.error, committed_offsets=state.committed_offsets,
                            status=state.status.value, lag_seconds=state.lag_seconds)
        for group, state in status.consumer_lag.items()}
    return BooksStatusBody(
        last_run=status.last_run.isoformat() if status.last_run else None,
        status=status.status,
        checks={name: check.value for name, check in status.checks.items()},
        violations=status.violations,
        consumer_lag=lag,
        reconciled_by=status.reconciled_by,
    )


def render_books_status(status: BooksStatus) -> dict[str, Any]:
    """``books_status_body`` as JSON-ready data, for a status body built as a dict."""
    body: dict[str, Any] = books_status_body(status).model_dump(mode="json")
    return body


# --- routes -----------------------------------------------------------------------------------
def build_books_router(books: Books) -> APIRouter:
    router = APIRouter(tags=["reconciliation"])
    router.include_router(build_accounts_router(books))

    @router.get("/api/v1/reconciliation", response_model=ReconciliationBody,
                summary="The latest reconciliation: each check's status (ok, violated, "
                "unknown, skipped) with the offending payments and accounts")
    def reconciliation() -> ReconciliationBody:
        return reconciliation_body(books.latest(), books.interval_seconds,
                                   books.reconciled_by())

    @router.post("/api/v1/reconciliation/run", response_model=ReconciliationBody,
                 dependencies=[Depends(require_token)],
                 summary="Run a reconciliation now and return its report",
                 responses={503: {"description": "a run in progress did not finish in time"}})
    def run_reconciliation() -> ReconciliationBody:
        report = books.run_now()
        if report is None:
            raise HTTPException(status_code=503, detail="a reconciliation is still running")
        return reconciliation_body(books.latest(), books.interval_seconds,
                                   books.reconciled_by())

    return router
