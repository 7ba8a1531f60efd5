"""``GET /api/v1/accounts``: the twin's accounts as its books see them, rendered in
the API's casing (camelCase keys, money as decimal strings).

The view is the latest reconciliation's (``books.accounts``): each account's
balance and reserved balance as its bank reported them (from the bank's database
when ``DB_BANK_*`` is configured, else REST), the range the ledger expects, the
drift, and the payments in flight on it. ``POST /api/v1/reconciliation/run``
refreshes it on demand.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from fastapi import APIRouter
from pydantic import Field

from bgmock_twin.api.wire import WireResponse
from bgmock_twin.books.accounts import IN_FLIGHT_LISTED, AccountLine, AccountsView, BankTotals
from bgmock_twin.books.model import Range
from bgmock_twin.books.service import Books


class RangeBody(WireResponse):
    min: str
    max: str


class AccountBody(WireResponse):
    bank: str
    account: str
    read: bool = Field(description="false: the bank was not read for it this time")
    missing: bool = Field(description="the bank was read and does not know the account")
    balance: str | None
    reserved: str | None
    source: str | None = Field(description="sql (the bank's database) or rest")
    expected_balance: RangeBody
    expected_reserved: RangeBody
    drift: str | None = Field(description="how far the balance lies outside the expected "
                              "range (0.00 inside); null when not read")
    in_flight: int = Field(description="unfinished payments from or to the account")
    in_flight_payments: list[str] = Field(
        description=f"their payment ids (the first {IN_FLIGHT_LISTED})")


class BankBody(WireResponse):
    accounts: int
    read: int
    balance: str
    reserved: str
    expected_balance: RangeBody
    drift: str


class AccountsBody(WireResponse):
    read_at: str | None = Field(description="when the balances were read (ISO 8601, UTC); "
                                "null before the first reconciliation")
    status: str = Field(description="ok, or pending before the first reconciliation")
    banks_read: list[str]
    banks: dict[str, BankBody] = Field(description="per bank, the accounts added up")
    accounts: list[AccountBody]


CENT = Decimal("0.01")


def money(value: Decimal | None) -> str | None:
    """An amount as a decimal string in cents (``0.00``, never ``0``)."""
    return None if value is None else format(value.quantize(CENT), "f")


def _money(value: Decimal) -> str:
    return format(value.quantize(CENT), "f")


def _range(value: Range) -> RangeBody:
    return RangeBody(min=_money(value.lo), max=_money(value.hi))


def account_body(line: AccountLine) -> AccountBody:
    return AccountBody(
        bank=line.account.bank, account=line.account.number, read=line.read,
        missing=line.missing, balance=money(line.balance), reserved=money(line.reserved),
        source=line.source, expected_balance=_range(line.expected_balance),
        expected_reserved=_range(line.expected_reserved), drift=money(line.drift),
        in_flight=line.in_flight, in_flight_payments=list(line.in_flight_ids),
    )


def _bank(totals: BankTotals) -> BankBody:
    return BankBody(accounts=totals.accounts, read=totals.read,
                    balance=_money(totals.balance), reserved=_money(totals.reserved),
                    expected_balance=_range(totals.expected), drift=_money(totals.drift))


def accounts_body(view: AccountsView | None, bank: str | None = None) -> AccountsBody:
    if view is None:
        return AccountsBody(read_at=None, status="pending", banks_read=[], banks={},
                            accounts=[])
    return AccountsBody(
        read_at=view.read_at.isoformat(), status="ok", banks_read=list(view.banks_read),
        banks={name: _bank(t) for name, t in view.totals().items() if bank in (None, name)},
        accounts=[account_body(line) for line in view.lines
                  if bank in (None, line.account.bank)],
    )


def build_accounts_router(books: Books) -> APIRouter:
    router = APIRouter(tags=["reconciliation"])

    @router.get("/api/v1/accounts", response_model=AccountsBody,
                summary="Every twin account: actual and reserved balance, the range the "
                "books expect, the drift and the payments in flight (as of the latest "
                "reconciliation)")
    def accounts(bank: Literal["bank_a", "bank_b"] | None = None) -> AccountsBody:
        return accounts_body(books.accounts(), bank)

    return router
