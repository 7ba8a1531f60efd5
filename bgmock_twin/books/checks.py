"""The invariants of the books, as pure functions over what was read.

Each check takes plain readings (no I/O, ``readings``) and returns a
``CheckResult`` (``results``): its violations, each with the evidence an operator
needs (which account or payment, what was expected, what was found). Whether a
check could run at all (its data source answered) is decided by the caller; a
check never turns missing data into a violation.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bgmock_twin.books.model import ZERO, AccountKey, Expectations
from bgmock_twin.books.readings import (
    AccountReading,
    FinishedPayment,
    OutboxStats,
    PendingSum,
    StoredRow,
)
from bgmock_twin.books.results import (
    BALANCE_DRIFT,
    CHECKS,
    CONSERVATION,
    EVIDENCE_LIMIT,
    OUTBOX_BACKLOG,
    OUTBOX_INTEGRITY,
    RESERVED_BOUNDS,
    RESERVED_MATCHES_PENDING,
    STALE_PENDING,
    STATUS_AGREEMENT,
    BankDrift,
    CheckResult,
    CheckStatus,
    OutboxFigures,
    Violation,
    money,
)
from bgmock_twin.contract import SERVICES as CONTRACT_SERVICES
from bgmock_twin.contract import Channel
from bgmock_twin.tracking.lifecycle import Outcome

__all__ = [
    "BALANCE_DRIFT", "CHECKS", "CONSERVATION", "EVIDENCE_LIMIT", "OUTBOX_BACKLOG",
    "OUTBOX_INTEGRITY", "RESERVED_BOUNDS", "RESERVED_MATCHES_PENDING", "SERVICES", "STALE_PENDING",
    "STATUS_AGREEMENT", "AccountReading", "CheckResult", "CheckStatus", "FinishedPayment",
    "OutboxStats", "PendingSum", "StoredRow", "Violation", "balance_drift", "conservation",
    "expected_presence", "money", "outbox_backlog", "outbox_integrity", "reserved_bounds",
    "reserved_matches_pending", "stale_pending", "status_agreement",
]

SERVICES = tuple(service.name for service in CONTRACT_SERVICES)


# --- balance checks --------------------------------------------------------------------------
def balance_drift(
    expected: Expectations,
    readings: Mapping[AccountKey, AccountReading | None],
    banks_read: Iterable[str],
) -> CheckResult:
    """Every twin account of a bank that could be read lies within its expected
    range; ``None`` in ``readings`` means the bank said the account does not exist.

    ``drift`` carries per bank the summed absolute drift and the number of
    drifting accounts (the ``bgmock_balance_drift`` gauges).
    """
    banks = set(banks_read)
    drift: dict[str, Decimal] = {bank: ZERO for bank in sorted(banks)}
    drifting: dict[str, int] = {bank: 0 for bank in sorted(banks)}
    violations: list[Violation] = []
    unread = sorted({a.bank for a in expected.accounts} - banks)
    for account, expectation in expected.accounts.items():
        if account.bank not in banks:
            continue
        if account not in readings:
            continue  # not read (e.g. the read stopped at a timeout): no claim
        reading = readings[account]
        if reading is None:
            amount = max(abs(expectation.balance.lo), abs(expectation.balance.hi))
            drift[account.bank] += amount
            drifting[account.bank] += 1
            violations.append(Violation(
                BALANCE_DRIFT, str(account), "twin account missing at the bank",
                {"bank": account.bank, "account": account.number, "actual": None,
                 "expected": expectation.balance.as_dict()},
            ))
            continue
        distance = expectation.balance.distance(reading.balance)
        if distance == ZERO:
            continue
        drift[account.bank] += distance
        drifting[account.bank] += 1
        violations.append(Violation(
            BALANCE_DRIFT, str(account),
            f"balance {money(reading.balance)} outside the expected "
            f"{money(expectation.balance.lo)}..{money(expectation.balance.hi)}",
            {"bank": account.bank, "account": account.number,
             "actual": money(reading.balance), "expected": expectation.balance.as_dict(),
             "drift": money(distance), "in_flight_payments": list(expectation.in_flight[:20]),
             "source": reading.source},
        ))
    unread_accounts = [a for a in expected.accounts if a.bank in banks and a not in readings]
    missing = ", ".join(unread) if unread else None
    if unread_accounts and not missing:
        missing = f"{len(unread_accounts)} account(s) not read"
    return CheckResult.of(
        BALANCE_DRIFT, violations, f"not read: {missing}" if missing else None,
        drift={b: BankDrift(v, drifting[b]) for b, v in drift.items()},
    )


def conservation(
    expected: Expectations, readings: Mapping[AccountKey, AccountReading | None]
) -> CheckResult:
    """The sum of the twin's balances across both banks changes only by the twin's
    deposits and the Kafka-channel money credited from outside (in-flight payments
    accounted for). Needs every twin account read."""
    if not expected.accounts:
        return CheckResult.of(CONSERVATION, [], None, accounts=0)
    unread = [a for a in expected.accounts if a not in readings]
    if unread:
        return CheckResult.unknown(
            CONSERVATION, f"{len(unread)} twin account(s) not read")
    total = ZERO
    for account in expected.accounts:
        reading = readings[account]
        if reading is not None:
            total += reading.balance
    distance = expected.total.distance(total)
    detail: dict[str, Any] = {
        "actual_total": money(total), "expected_total": expected.total.as_dict(),
        "deposits": expected.deposits.as_dict(),
        "external_kafka_credits": expected.external.as_dict()}
    if distance == ZERO:
        return CheckResult.of(CONSERVATION, [], None, **detail)
    created = total > expected.total.hi
    return CheckResult.of(CONSERVATION, [Violation(
        CONSERVATION, "twin_accounts",
        f"money {'appeared' if created else 'vanished'}: total {money(total)} outside "
        f"{money(expected.total.lo)}..{money(expected.total.hi)}",
        {**detail, "difference": money(total - expected.total.hi if created
                                        else total - expected.total.lo),
         "in_flight_payments": list(expected.in_flight[:20])},
    )], None, **detail)


def reserved_bounds(readings: Iterable[AccountReading]) -> CheckResult:
    """``0 <= reservedBalance <= balance`` for every account read."""
    violations: list[Violation] = []
    seen: set[AccountKey] = set()
    for reading in readings:
        if reading.account in seen:
            continue
        seen.add(reading.account)
        if ZERO <= reading.reserved <= reading.balance:
            continue
        violations.append(Violation(
            RESERVED_BOUNDS, str(reading.account),
            "reserved balance negative" if reading.reserved < ZERO
            else "reserved balance above balance",
            {"bank": reading.account.bank, "account": reading.account.number,
             "balance": money(reading.balance), "reserved": money(reading.reserved),
             "source": reading.source},
        ))
    return CheckResult.of(RESERVED_BOUNDS, violations, None, accounts_checked=len(seen))


def reserved_matches_pending(
    mismatches: Sequence[PendingSum], previous: Mapping[AccountKey, Decimal]
) -> CheckResult:
    """Reserved balance equals the sum of the account's PENDING outgoing amounts
    once quiet: a mismatch counts when the same account showed the same difference
    on the previous run too (a payment between reserve and store would not).

    ``previous`` maps accounts to the difference seen last time.
    """
    violations = [
        Violation(
            RESERVED_MATCHES_PENDING, str(m.account),
            f"reserved {money(m.reserved)} but PENDING outgoing sum {money(m.pending)}",
            {"bank": m.account.bank, "account": m.account.number,
             "reserved": money(m.reserved), "pending_outgoing": money(m.pending),
             "difference": money(m.difference)},
        )
        for m in mismatches if previous.get(m.account) == m.difference
    ]
    return CheckResult.of(RESERVED_MATCHES_PENDING, violations, None,
                          unconfirmed=len(mismatches) - len(violations))


# --- payments across services ------------------------------------------------------------------
def expected_presence(payment: FinishedPayment) -> dict[str, set[str | None]]:
    """Statuses each service may show for a finished payment, by its outcome, keyed
    by where they are read: ``<bank>:outgoing`` (the source bank), ``clearing``,
    ``<bank>:incoming`` (the destination bank). ``None`` stands for "no row".

    REST: the source bank stores the outgoing transaction; the clearing and the
    destination only see it if the source accepted it. Kafka channel: the source
    bank never sees it.
    """
    source = f"{payment.source_service}:outgoing"
    destination = f"{payment.destination_service}:incoming" \
        if payment.destination_service is not None else None
    rest = payment.channel == Channel.REST
    allowed: dict[str, set[str | None]] = {}
    if payment.outcome is Outcome.SUCCESS:
        if rest:
            allowed[source] = {"SUCCESS"}
        allowed["clearing"] = {"SUCCESS"}
        if destination is not None:
            allowed[destination] = {"SUCCESS"}
    elif payment.outcome is Outcome.FAILED:
        if rest:
            allowed[source] = {"FAILED"}
        allowed["clearing"] = {"FAILED"}
        if destination is not None:
            allowed[destination] = {"FAILED", None}
    else:  # rejected: the source refused it, nobody else may have it
        if rest:
            allowed[source] = {"FAILED", None}
        allowed["clearing"] = {None}
        if destination is not None:
            allowed[destination] = {None}
    return allowed


def status_agreement(
    payments: Sequence[FinishedPayment],
    statuses: Mapping[str, Mapping[uuid.UUID, str]],
) -> CheckResult:
    """For every finished synthetic payment, the source bank, the clearing and the
    destination bank agree with each other and with the twin's outcome.

    ``statuses`` is keyed like ``expected_presence`` and holds the status of each
    queried transaction the service has; a missing id means no row. Keys absent
    from ``statuses`` were not read (their service did not answer).
    """
    violations: list[Violation] = []
    not_read: set[str] = set()
    checked = 0
    for payment in payments:
        found: dict[str, str | None] = {}
        problems: list[str] = []
        complete = True
        for where, options in expected_presence(payment).items():
            table = statuses.get(where)
            if table is None:
                not_read.add(where.split(":")[0])
                complete = False
                continue
            found[where] = table.get(payment.transaction_id)
            if found[where] not in options:
                problems.append(f"{where} {found[where] or 'has no row'}")
        if problems:
            violations.append(Violation(
                STATUS_AGREEMENT, f"payment {payment.payment_id}",
                f"twin says {payment.outcome}, but " + ", ".join(problems),
                {"payment_id": payment.payment_id, "transaction_id": str(payment.transaction_id),
                 "channel": payment.channel, "twin_outcome": payment.outcome,
                 "statuses": found},
            ))
        elif complete:
            checked += 1
    unknown = f"not read: {', '.join(sorted(not_read))}" if not_read else None
    return CheckResult.of(STATUS_AGREEMENT, violations, unknown, payments_checked=checked)


# --- outbox and stale transactions ------------------------------------------------------------
def outbox_backlog(
    stats: Mapping[str, OutboxStats],
    now_utc_naive: datetime,
    max_pending: float,
    max_age_seconds: float,
    services_expected: Iterable[str] = SERVICES,
    clock_offsets: Mapping[str, timedelta] | None = None,
) -> CheckResult:
    """Unpublished outbox rows drain: their count and the age of the oldest stay
    within the SLO. ``outbox`` carries the figures per service (the gauges).

    Ages are measured on the service's clock: ``clock_offsets[service]`` (its
    timestamps minus the twin's UTC) corrects a service that writes local time."""
    violations: list[Violation] = []
    figures: dict[str, OutboxFigures] = {}
    for service in sorted(stats):
        s = stats[service]
        age = 0.0
        now = now_utc_naive + (clock_offsets or {}).get(service, timedelta(0))
        if s.oldest_created_at is not None and s.unpublished > 0:
            age = max(0.0, (now - s.oldest_created_at).total_seconds())
        figures[service] = OutboxFigures(s.unpublished, round(age, 3))
        reasons = []
        if s.unpublished > max_pending:
            reasons.append(f"{s.unpublished} unpublished rows (limit {max_pending:g})")
        if age > max_age_seconds:
            reasons.append(f"oldest unpublished row {age:.1f}s old (limit {max_age_seconds:g}s)")
        if reasons:
            violations.append(Violation(
                OUTBOX_BACKLOG, f"outbox {service}", "; ".join(reasons),
                {"service": service, "unpublished": s.unpublished,
                 "oldest_age_seconds": round(age, 3),
                 "oldest_created_at": s.oldest_created_at.isoformat()
                 if s.oldest_created_at else None},
            ))
    missing = sorted(set(services_expected) - set(stats))
    return CheckResult.of(OUTBOX_BACKLOG, violations,
                          f"not read: {', '.join(missing)}" if missing else None,
                          outbox=figures)


def outbox_integrity(
    missing_rows: Mapping[str, Sequence[StoredRow]],
    services_expected: Iterable[str] = SERVICES,
) -> CheckResult:
    """Every PENDING transaction has the outbox row that carries it to its next hop
    (bank: ``transactions.initiated``; clearing: ``transactions.forwarded``). The
    transactional outbox writes both in one transaction, so a PENDING row without
    its outbox row is an event that will never be sent."""
    violations = [
        Violation(
            OUTBOX_INTEGRITY, f"{row.service} transaction {row.transaction_id}",
            f"PENDING at {row.service} with no outbox row: its event will never be published",
            {"service": row.service, "transaction_id": str(row.transaction_id),
             "account": row.account_number, "amount": money(row.amount),
             "created_at": row.created_at.isoformat() if row.created_at else None},
        )
        for service in sorted(missing_rows) for row in missing_rows[service]
    ]
    missing = sorted(set(services_expected) - set(missing_rows))
    return CheckResult.of(OUTBOX_INTEGRITY, violations,
                          f"not read: {', '.join(missing)}" if missing else None)


def stale_pending(
    rows: Mapping[str, Sequence[StoredRow]],
    now_utc_naive: datetime,
    sla_seconds: float,
    services_expected: Iterable[str] = SERVICES,
    mappings: Mapping[str, tuple[str | None, str | None] | None] | None = None,
    clock_offsets: Mapping[str, timedelta] | None = None,
) -> CheckResult:
    """No transaction stays PENDING in a service's database longer than the payment
    SLA, synthetic or not (nothing in BGMock times a payment out).

    ``mappings`` (the clearing's bank mappings of the payees) go into the evidence:
    a payee mapped to a clearing number no bank serves is a classic cause. Ages are
    measured on the service's clock (``clock_offsets``, as for the outbox)."""
    violations: list[Violation] = []
    for service in sorted(rows):
        now = now_utc_naive + (clock_offsets or {}).get(service, timedelta(0))
        for row in rows[service]:
            if row.status != "PENDING" or row.created_at is None:
                continue
            age = (now - row.created_at).total_seconds()
            if age <= sla_seconds:
                continue
            evidence: dict[str, Any] = {
                "service": service, "table": row.table,
                "transaction_id": str(row.transaction_id), "account": row.account_number,
                "amount": money(row.amount), "age_seconds": round(age, 1),
                "created_at": row.created_at.isoformat()}
            if row.bankgood_number is not None:
                evidence["bankgood_number"] = row.bankgood_number
                if mappings is not None and row.bankgood_number in mappings:
                    mapped = mappings[row.bankgood_number]
                    evidence["mapping"] = None if mapped is None else {
                        "clearing_number": mapped[0], "account_number": mapped[1]}
            violations.append(Violation(
                STALE_PENDING, f"{service} transaction {row.transaction_id}",
                f"PENDING for {age:.0f}s at {service} (SLA {sla_seconds:g}s)", evidence,
            ))
    missing = sorted(set(services_expected) - set(rows))
    return CheckResult.of(STALE_PENDING, violations,
                          f"not read: {', '.join(missing)}" if missing else None)
