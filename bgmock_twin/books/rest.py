"""Balances of the twin's accounts through BGMock's REST API: ``GET
/bank/account/{n}``, one bank after the other (the order narrows the conservation
range), stopping at a bank's first timeout. Read-only."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bgmock_twin.books.model import AccountKey
from bgmock_twin.books.readings import AccountReading
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.contract import BANK_A, BANK_B, parse_amount


@dataclass(slots=True)
class RestAccounts:
    readings: dict[AccountKey, AccountReading | None] = field(default_factory=dict)
    banks_read: list[str] = field(default_factory=list)  # every account of these was read
    errors: dict[str, str] = field(default_factory=dict)


def read_rest_accounts(
    clients: BGMockClients,
    accounts: Iterable[AccountKey],
    order: Sequence[str],
    timeout: float,
) -> RestAccounts:
    """``GET /bank/account/{n}`` for every twin account, bank by bank in ``order``.
    A bank that times out or refuses is given up at once (its accounts unread)."""
    by_bank: dict[str, list[AccountKey]] = {}
    for account in sorted(accounts):
        by_bank.setdefault(account.bank, []).append(account)
    banks = {BANK_A.name: clients.bank_a, BANK_B.name: clients.bank_b}
    result = RestAccounts()
    for bank_name in order:
        bank = banks.get(bank_name)
        if bank is None:
            continue
        try:
            for account in by_bank.get(bank_name, []):
                result.readings[account] = _get_account(bank.rest, account, timeout)
        except ServiceError as exc:
            result.errors[bank_name] = exc.reason
            for account in by_bank.get(bank_name, []):
                result.readings.pop(account, None)
            continue
        result.banks_read.append(bank_name)
    return result


def _get_account(rest: Any, account: AccountKey, timeout: float) -> AccountReading | None:
    response = rest.request("GET", "/bank/account/{accountNumber}",
                            {"accountNumber": account.number}, timeout=timeout)
    if response.status == 404:
        return None
    body = response.body
    if response.status != 200 or not isinstance(body, dict):
        raise ServiceError(rest.service, f"http_{response.status}" if response.status != 200
                           else "bad_body")
    try:
        return AccountReading(account, parse_amount(body.get("balance")),
                              parse_amount(body.get("reservedBalance") or 0), "rest")
    except ValueError:
        raise ServiceError(rest.service, "bad_body") from None
