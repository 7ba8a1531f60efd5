"""What one reconciliation run found (``Report``), and how a balance suspicion is
confirmed by a second look before it counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from bgmock_twin.books.accounts import AccountLine, AccountsView
from bgmock_twin.books.model import ZERO, AccountKey
from bgmock_twin.books.readings import AccountReading
from bgmock_twin.books.results import BankDrift, CheckResult, CheckStatus


@dataclass(slots=True)
class Report:
    ran_at: datetime
    duration_seconds: float
    results: dict[str, CheckResult]
    sources: dict[str, str]
    clock_offsets: dict[str, timedelta] = field(default_factory=dict)
    accounts: AccountsView | None = None  # None when the balances could not be modelled

    @property
    def violations(self) -> int:
        return sum(len(r.violations) for r in self.results.values())

    @property
    def status(self) -> str:
        statuses = {r.status for r in self.results.values()}
        if CheckStatus.VIOLATED in statuses:
            return "violated"
        if CheckStatus.UNKNOWN in statuses:
            return "unknown"
        return "ok"


@dataclass(slots=True)
class BalancePass:
    readings: dict[AccountKey, AccountReading | None]
    banks_read: list[str]
    drift: CheckResult
    conservation: CheckResult
    sources: dict[str, str] = field(default_factory=dict)
    accounts: tuple[AccountLine, ...] | None = None  # None without a model


def confirmed(first: BalancePass, second: BalancePass) -> BalancePass:
    """Keep only the balance violations seen on both looks (with the second look's
    evidence); the second look decides what is ok or unknown."""
    def both(a: CheckResult, b: CheckResult) -> CheckResult:
        if b.status is not CheckStatus.VIOLATED:
            return b
        keys = {v.key for v in a.violations}
        kept = [v for v in b.violations if v.key in keys]
        if kept:
            return CheckResult(b.check, CheckStatus.VIOLATED, kept, b.reason, dict(b.figures),
                               b.drift, b.outbox)
        return CheckResult(b.check, CheckStatus.OK, [], None, dict(b.figures), b.drift, b.outbox)

    drift = both(first.drift, second.drift)
    if drift.status is CheckStatus.OK and second.drift.status is CheckStatus.VIOLATED:
        # the unconfirmed drift does not count in the gauges either
        drift.drift = {bank: BankDrift(ZERO, 0) for bank in drift.drift or {}}
    elif drift.status is CheckStatus.VIOLATED:
        drift.drift = confirmed_drift(drift)
    return BalancePass(second.readings, second.banks_read, drift,
                       both(first.conservation, second.conservation),
                       {**first.sources, **{f"confirm_{k}": v for k, v in second.sources.items()}},
                       second.accounts)


def confirmed_drift(result: CheckResult) -> dict[str, BankDrift]:
    """Per-bank drift figures recomputed from the confirmed violations only."""
    drift = {bank: ZERO for bank in result.drift or {}}
    count = {bank: 0 for bank in result.drift or {}}
    for violation in result.violations:
        bank = violation.evidence["bank"]
        amount = violation.evidence.get("drift")
        if amount is None:  # a missing account
            expected = violation.evidence["expected"]
            amount = max(abs(Decimal(expected["min"])), abs(Decimal(expected["max"])))
        drift[bank] = drift.get(bank, ZERO) + Decimal(amount)
        count[bank] = count.get(bank, 0) + 1
    return {bank: BankDrift(amount, count[bank]) for bank, amount in drift.items()}
