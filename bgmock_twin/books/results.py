"""What a check says: its status, its violations with their evidence, and typed
figures (drift per bank, outbox backlog per service) that the metrics read.

Check names are the ``check`` label of ``bgmock_invariant_violations``; the set is
fixed (``CHECKS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

BALANCE_DRIFT = "balance_drift"
CONSERVATION = "conservation"
RESERVED_BOUNDS = "reserved_bounds"
RESERVED_MATCHES_PENDING = "reserved_matches_pending"
STATUS_AGREEMENT = "status_agreement"
OUTBOX_BACKLOG = "outbox_backlog"
OUTBOX_INTEGRITY = "outbox_integrity"
STALE_PENDING = "stale_pending"
CHECKS = (
    BALANCE_DRIFT, CONSERVATION, RESERVED_BOUNDS, RESERVED_MATCHES_PENDING,
    STATUS_AGREEMENT, OUTBOX_BACKLOG, OUTBOX_INTEGRITY, STALE_PENDING,
)
EVIDENCE_LIMIT = 50  # violations listed per check; the count is always complete


class CheckStatus(StrEnum):
    OK = "ok"
    VIOLATED = "violated"
    UNKNOWN = "unknown"  # a data source did not answer: nothing can be said
    SKIPPED = "skipped"  # the data source is not configured (e.g. no DB_* URL)


def money(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    subject: str  # what is wrong: an account, a payment, a service
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identity across runs: the same problem seen again is not a new detection."""
        return f"{self.check}:{self.subject}"


@dataclass(frozen=True, slots=True)
class BankDrift:
    """One bank's balance drift: summed over its drifting accounts, and their number
    (``bgmock_balance_drift``, ``bgmock_drifting_accounts``)."""

    amount: Decimal
    accounts: int


@dataclass(frozen=True, slots=True)
class OutboxFigures:
    """One service's outbox backlog (``bgmock_outbox_pending``, ``..._oldest_age``)."""

    unpublished: int
    oldest_age_seconds: float


@dataclass(slots=True)
class CheckResult:
    check: str
    status: CheckStatus
    violations: list[Violation] = field(default_factory=list)
    reason: str | None = None  # why unknown or skipped
    figures: dict[str, Any] = field(default_factory=dict)  # more figures, for the report
    drift: dict[str, BankDrift] | None = None  # balance_drift: per bank read
    outbox: dict[str, OutboxFigures] | None = None  # outbox_backlog: per service read

    @classmethod
    def unknown(cls, check: str, reason: str) -> CheckResult:
        return cls(check, CheckStatus.UNKNOWN, reason=reason)

    @classmethod
    def skipped(cls, check: str, reason: str) -> CheckResult:
        return cls(check, CheckStatus.SKIPPED, reason=reason)

    @classmethod
    def of(cls, check: str, violations: list[Violation], unknown: str | None = None, *,
           drift: dict[str, BankDrift] | None = None,
           outbox: dict[str, OutboxFigures] | None = None, **figures: Any) -> CheckResult:
        """Violated if anything was found; else unknown if part of the data was
        missing (``unknown`` says what); else ok."""
        if violations:
            status = CheckStatus.VIOLATED
        elif unknown:
            status = CheckStatus.UNKNOWN
        else:
            status = CheckStatus.OK
        return cls(check, status, violations, unknown, figures, drift, outbox)

    @property
    def detail(self) -> dict[str, Any]:
        """Every figure as plain data (amounts as exact strings)."""
        body: dict[str, Any] = {}
        if self.drift is not None:
            body["drift"] = {bank: money(d.amount) for bank, d in self.drift.items()}
            body["drifting_accounts"] = {bank: d.accounts for bank, d in self.drift.items()}
        if self.outbox is not None:
            body["services"] = {
                service: {"unpublished": f.unpublished,
                          "oldest_age_seconds": f.oldest_age_seconds}
                for service, f in self.outbox.items()}
        body.update(self.figures)
        return body
