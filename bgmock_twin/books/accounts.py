"""The accounts view: every twin account with what its bank says it holds, what the
twin's books say it should hold, the drift between the two, and the payments still
on their way through it.

Built by each reconciliation from the very readings and model its balance check
compared (``reconcile``), so the view and the check never disagree; the control API
(``GET /api/v1/accounts``), the ``bgmock-twin accounts`` table and the per-bank
gauges (``bgmock_account_balance`` and its expected bounds) all show it. Account
numbers never become metric labels: the gauges are per bank.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from bgmock_twin.books.model import ZERO, AccountKey, Expectations, PaymentFact, Range
from bgmock_twin.books.readings import AccountReading

IN_FLIGHT_LISTED = 20  # payment ids listed per account; the count is always whole


@dataclass(frozen=True, slots=True)
class AccountLine:
    account: AccountKey
    read: bool  # the bank was read and answered for this account
    balance: Decimal | None  # None: not read, or missing at the bank
    reserved: Decimal | None
    source: str | None  # "sql" or "rest"
    expected_balance: Range
    expected_reserved: Range
    drift: Decimal | None  # how far the balance lies outside the expected range
    in_flight: int  # unfinished payments from or to the account
    in_flight_ids: tuple[str, ...]  # the first IN_FLIGHT_LISTED of them

    @property
    def missing(self) -> bool:
        """The bank was read and said the account does not exist."""
        return self.read and self.balance is None


@dataclass(frozen=True, slots=True)
class BankTotals:
    """A bank's twin accounts added up (what the per-bank gauges export)."""

    accounts: int
    read: int
    balance: Decimal  # of the accounts read
    reserved: Decimal
    expected: Range  # of the same accounts
    drift: Decimal


@dataclass(frozen=True, slots=True)
class AccountsView:
    read_at: datetime
    banks_read: tuple[str, ...]
    lines: tuple[AccountLine, ...]

    def totals(self) -> dict[str, BankTotals]:
        banks = sorted({line.account.bank for line in self.lines} | set(self.banks_read))
        result: dict[str, BankTotals] = {}
        for bank in banks:
            lines = [line for line in self.lines if line.account.bank == bank]
            read = [line for line in lines if line.read and line.balance is not None]
            expected = Range(ZERO, ZERO)
            for line in read:
                expected += line.expected_balance
            result[bank] = BankTotals(
                accounts=len(lines), read=len(read),
                balance=sum((line.balance or ZERO for line in read), ZERO),
                reserved=sum((line.reserved or ZERO for line in read), ZERO),
                expected=expected,
                drift=sum((line.drift or ZERO for line in lines), ZERO),
            )
        return result


def in_flight_by_account(payments: Iterable[PaymentFact],
                         unfinished: Set[str]) -> dict[AccountKey, list[str]]:
    """The payments the ledger has as unfinished, by each account they touch (as
    source or destination). The model's own view is not used: it takes a payment
    finished a moment ago as "may be anywhere" too."""
    result: dict[AccountKey, list[str]] = {}
    for payment in payments:
        if payment.payment_id not in unfinished:
            continue
        for account in {payment.source, payment.destination}:
            result.setdefault(account, []).append(payment.payment_id)
    return result


def account_lines(
    model: Expectations,
    readings: Mapping[AccountKey, AccountReading | None],
    banks_read: Iterable[str],
    payments: Iterable[PaymentFact],
    unfinished: Set[str],
) -> tuple[AccountLine, ...]:
    """One line per account of the model, in bank and number order (pure);
    ``unfinished``: the ids of the payments still in flight."""
    read_banks = set(banks_read)
    flying = in_flight_by_account(payments, unfinished)
    lines = []
    for account, expectation in model.accounts.items():
        read = account.bank in read_banks and account in readings
        reading = readings.get(account) if read else None
        if reading is not None:
            drift: Decimal | None = expectation.balance.distance(reading.balance)
        elif read:  # missing at the bank: all it should hold is drift
            drift = max(abs(expectation.balance.lo), abs(expectation.balance.hi))
        else:
            drift = None
        ids = flying.get(account, [])
        lines.append(AccountLine(
            account=account, read=read,
            balance=reading.balance if reading else None,
            reserved=reading.reserved if reading else None,
            source=reading.source if reading else None,
            expected_balance=expectation.balance, expected_reserved=expectation.reserved,
            drift=drift, in_flight=len(ids), in_flight_ids=tuple(ids[:IN_FLIGHT_LISTED]),
        ))
    return tuple(lines)
