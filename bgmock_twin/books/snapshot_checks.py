"""The checks read from the BGMock databases' snapshots, with what each run hands
to the next: an account's reserved-vs-pending difference seen before, and the
payments whose statuses must be looked at again (pure functions)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from bgmock_twin.books import checks as c
from bgmock_twin.books.model import AccountKey
from bgmock_twin.books.readings import AccountReading, FinishedPayment
from bgmock_twin.books.report import BalancePass
from bgmock_twin.books.results import CheckResult, CheckStatus
from bgmock_twin.books.sql import BankSnapshot, ClearingSnapshot
from bgmock_twin.contract import BANKS, CLEARING, service_by_name

STATUS_HOLD_LIMIT = 500  # disagreeing / unreadable payments kept for another look


def database_of(service: str) -> str:
    """``db_bank_a`` for ``bank_a``: the source name of a service's database."""
    found = service_by_name(service)
    return found.database if found is not None else f"db_{service}"


def _unread(result: CheckResult, unread: Sequence[str]) -> CheckResult:
    if unread and result.status is CheckStatus.OK:
        result.status = CheckStatus.UNKNOWN
        result.reason = f"not read: {', '.join(database_of(b) for b in unread)}"
    return result


def reserved_bounds(balance: BalancePass, banks: Mapping[str, BankSnapshot],
                    asked: Sequence[str]) -> CheckResult:
    """``reserved_bounds`` over every account read, through REST or SQL; ``asked``
    are the banks whose database was read (or tried)."""
    readings: list[AccountReading] = [r for r in balance.readings.values() if r is not None]
    for snapshot in banks.values():
        readings.extend(snapshot.out_of_bounds)
    result = c.reserved_bounds(readings)
    if not balance.banks_read and not banks:
        return CheckResult.unknown(c.RESERVED_BOUNDS, "no account could be read")
    return _unread(result, [b for b in asked if b not in banks])


@dataclass(frozen=True, slots=True)
class PendingMatch:
    result: CheckResult
    differences: dict[AccountKey, Decimal]  # to compare with on the next run


def reserved_matches(banks: Mapping[str, BankSnapshot], asked: Sequence[str],
                     previous: Mapping[AccountKey, Decimal]) -> PendingMatch:
    if not asked:
        return PendingMatch(CheckResult.skipped(c.RESERVED_MATCHES_PENDING,
                                                "no bank database configured"), dict(previous))
    mismatches = [m for s in banks.values() for m in s.pending_mismatches]
    result = c.reserved_matches_pending(mismatches, previous)
    differences = {account: difference for account, difference in previous.items()
                   if account.bank not in banks}
    for m in mismatches:
        differences[m.account] = m.difference
    return PendingMatch(_unread(result, [b for b in asked if b not in banks]), differences)


@dataclass(frozen=True, slots=True)
class StatusAgreement:
    result: CheckResult
    hold: dict[str, FinishedPayment]  # to compare again on the next run


def status_agreement(
    candidates: Sequence[FinishedPayment],
    ledger_state: str,
    banks: Mapping[str, BankSnapshot],
    clearing: ClearingSnapshot | None,
    asked: Sequence[str],
    clearing_asked: bool,
    hold: Mapping[str, FinishedPayment],
) -> StatusAgreement:
    if len(asked) < len(BANKS) or not clearing_asked:
        return StatusAgreement(CheckResult.skipped(
            c.STATUS_AGREEMENT, "needs DB_BANK_A, DB_BANK_B and DB_SWITCH"), dict(hold))
    if ledger_state != "ok":
        return StatusAgreement(CheckResult.unknown(c.STATUS_AGREEMENT,
                                                   ledger_reason(ledger_state)), dict(hold))
    statuses: dict[str, Mapping[uuid.UUID, str]] = {}
    for bank, snapshot in banks.items():
        statuses[f"{bank}:outgoing"] = snapshot.outgoing_status
        statuses[f"{bank}:incoming"] = snapshot.incoming_status
    if clearing is not None:
        statuses[CLEARING.name] = clearing.status
    result = c.status_agreement(candidates, statuses)
    offending = {v.evidence["payment_id"] for v in result.violations}
    complete = set(statuses) == {CLEARING.name, *(f"{b.name}:{t}" for b in BANKS
                                                  for t in ("outgoing", "incoming"))}
    if not complete and result.status is CheckStatus.OK:  # even with nothing to compare
        unread = [b.database for b in BANKS if b.name not in banks]
        unread += [] if clearing is not None else [CLEARING.database]
        result.status = CheckStatus.UNKNOWN
        result.reason = f"not read: {', '.join(unread)}"
    kept = {p.payment_id: p for p in candidates if p.payment_id in offending or not complete}
    if len(kept) > STATUS_HOLD_LIMIT:
        kept = dict(list(kept.items())[-STATUS_HOLD_LIMIT:])
    return StatusAgreement(result, kept)


def ledger_reason(ledger_state: str) -> str:
    """Why the checks that read the ledger are unknown, from its read's state."""
    return ledger_state if ledger_state.startswith("the ledger") else f"ledger {ledger_state}"
