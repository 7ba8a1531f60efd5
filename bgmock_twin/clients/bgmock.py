"""Typed clients for the bank and clearing REST APIs of ``shared/bgmock-contract.md``.

Each method maps one endpoint and turns its JSON into small dataclasses with
``Decimal`` money. Contract quirks stay visible here: a rejected payment is still a
202, and creating something that exists is a 500, so callers look up first.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bgmock_twin.clients.rest import (
    Response,
    RestClient,
    ServiceError,
    expect,
    expect_object,
)
from bgmock_twin.contract import BANK_A, BANK_B, CLEARING, Bank, Service, Status, parse_amount

HEALTH_BODY = "OK"


@dataclass(frozen=True, slots=True)
class Account:
    account_number: str
    account_holder: str | None
    balance: Decimal
    reserved_balance: Decimal

    @property
    def available(self) -> Decimal:
        return self.balance - self.reserved_balance


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    """A transaction as a service stores it (outgoing at a bank or at the clearing,
    incoming at a bank)."""

    transaction_id: uuid.UUID
    status: Status
    amount: Decimal | None


@dataclass(frozen=True, slots=True)
class BankMapping:
    bankgood_number: str
    clearing_number: str
    account_number: str
    bank_name: str | None


def _account(body: dict[str, Any], service: str) -> Account:
    try:
        return Account(
            account_number=str(body["accountNumber"]),
            account_holder=body.get("accountHolder"),
            balance=parse_amount(body.get("balance", 0)),
            reserved_balance=parse_amount(body.get("reservedBalance") or 0),
        )
    except (KeyError, ValueError) as exc:
        raise ServiceError(service, "bad_body", f"account: {exc}") from None


def _transaction(body: dict[str, Any], service: str) -> StoredTransaction:
    try:
        amount = body.get("amount")
        return StoredTransaction(
            transaction_id=uuid.UUID(str(body["transactionId"])),
            status=Status(body["status"]),
            amount=None if amount is None else parse_amount(amount),
        )
    except (KeyError, ValueError) as exc:
        raise ServiceError(service, "bad_body", f"transaction: {exc}") from None


SUBMIT_ROUTE = "/bank/transaction/outgoing"
OUTGOING_ROUTE = "/bank/transaction/outgoing/{transactionId}"


def payment_body(from_account: str, to_bankgood_number: str, amount: Decimal,
                 client_transaction_id: uuid.UUID | None = None) -> dict[str, Any]:
    """The body of ``POST /bank/transaction/outgoing`` (either HTTP client sends it)."""
    body: dict[str, Any] = {
        "fromAccountNumber": from_account,
        "toBankgoodNumber": to_bankgood_number,
        "amount": amount,
    }
    if client_transaction_id is not None:
        body["transactionId"] = client_transaction_id
    return body


def accepted_transaction(response: Response, service: str) -> uuid.UUID:
    """The id in the bank's 202 (which does not mean the payment was accepted)."""
    answer = expect_object(response, service, 202)
    try:
        return uuid.UUID(str(answer["transactionId"]))
    except (KeyError, ValueError):
        raise ServiceError(service, "bad_body", "202 without transactionId") from None


def stored_transaction(response: Response, service: str) -> StoredTransaction | None:
    """A ``GET`` of a stored transaction: None for 404 (either HTTP client reads it)."""
    if response.status == 404:
        return None
    return _transaction(expect_object(response, service, 200), service)


class HealthCheckable:
    health_path = "/"

    def __init__(self, rest: RestClient) -> None:
        self.rest = rest
        self.service = rest.service

    def health(self, timeout: float) -> None:
        """Raise ``ServiceError`` unless the health endpoint answers 200 ``OK``."""
        response = self.rest.request("GET", self.health_path, timeout=timeout)
        if response.status != 200:
            raise ServiceError(self.service, f"http_{response.status}")
        if not isinstance(response.body, str) or response.body.strip() != HEALTH_BODY:
            raise ServiceError(self.service, "bad_body", "health body is not OK")

    def close(self) -> None:
        self.rest.close()


class BankClient(HealthCheckable):
    """One bank service (Bank A or Bank B)."""

    health_path = "/bank/health"

    def __init__(self, rest: RestClient, bank: Bank) -> None:
        super().__init__(rest)
        self.bank = bank
        self.clearing_number = bank.clearing_number

    def get_account(self, account_number: str) -> Account | None:
        response = self.rest.request(
            "GET", "/bank/account/{accountNumber}", {"accountNumber": account_number}
        )
        if response.status == 404:
            return None
        return _account(expect_object(response, self.service, 200), self.service)

    def list_accounts(self) -> list[Account]:
        body = expect(self.rest.request("GET", "/bank/account"), self.service, 200)
        if not isinstance(body, list):
            raise ServiceError(self.service, "bad_body", "expected a list of accounts")
        return [_account(item, self.service) for item in body if isinstance(item, dict)]

    def create_account(self, account_number: str, holder: str,
                       balance: Decimal = Decimal("0")) -> Account:
        response = self.rest.request(
            "POST", "/bank/account",
            json_body={"accountNumber": account_number, "accountHolder": holder,
                       "balance": balance},
        )
        return _account(expect_object(response, self.service, 201, 200), self.service)

    def deposit(self, account_number: str, amount: Decimal) -> Account:
        response = self.rest.request(
            "POST", "/bank/account/{accountNumber}/deposit", {"accountNumber": account_number},
            params={"amount": format(amount, "f")},
        )
        return _account(expect_object(response, self.service, 200), self.service)

    def submit_payment(
        self,
        from_account: str,
        to_bankgood_number: str,
        amount: Decimal,
        client_transaction_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """``POST /bank/transaction/outgoing``; the bank's 202 carries the id it chose.

        A 202 does not mean accepted: a rejected payment is stored FAILED with no
        event, visible only through ``get_outgoing``.
        """
        response = self.rest.request(
            "POST", SUBMIT_ROUTE,
            json_body=payment_body(from_account, to_bankgood_number, amount,
                                   client_transaction_id))
        return accepted_transaction(response, self.service)

    def get_outgoing(self, transaction_id: uuid.UUID) -> StoredTransaction | None:
        response = self.rest.request(
            "GET", OUTGOING_ROUTE, {"transactionId": str(transaction_id)})
        return stored_transaction(response, self.service)

    def get_incoming(self, transaction_id: uuid.UUID) -> StoredTransaction | None:
        response = self.rest.request(
            "GET", "/bank/transaction/incoming/{transactionId}",
            {"transactionId": str(transaction_id)},
        )
        if response.status == 404:
            return None
        return _transaction(expect_object(response, self.service, 200), self.service)


class ClearingClient(HealthCheckable):
    """The clearing service."""

    health_path = "/clearing/health"

    def get_mapping(self, bankgood_number: str) -> BankMapping | None:
        response = self.rest.request(
            "GET", "/clearing/bank-mapping/{bankgoodNumber}", {"bankgoodNumber": bankgood_number}
        )
        if response.status == 404:
            return None
        body = expect_object(response, self.service, 200)
        return BankMapping(
            bankgood_number=str(body.get("bankgoodNumber")),
            clearing_number=str(body.get("clearingNumber")),
            account_number=str(body.get("accountNumber")),
            bank_name=body.get("bankName"),
        )

    def create_mapping(self, mapping: BankMapping) -> None:
        response = self.rest.request(
            "POST", "/clearing/bank-mapping",
            json_body={
                "bankgoodNumber": mapping.bankgood_number,
                "clearingNumber": mapping.clearing_number,
                "accountNumber": mapping.account_number,
                "bankName": mapping.bank_name,
            },
        )
        expect(response, self.service, 200, 201)

    def get_transaction(self, transaction_id: uuid.UUID) -> StoredTransaction | None:
        response = self.rest.request(
            "GET", "/clearing/transaction/{transactionId}", {"transactionId": str(transaction_id)}
        )
        if response.status == 404:
            return None
        return _transaction(expect_object(response, self.service, 200), self.service)


@dataclass
class BGMockClients:
    """The three REST clients, built from the URLs in use (real or embedded)."""

    bank_a: BankClient
    bank_b: BankClient
    clearing: ClearingClient

    @classmethod
    def build(cls, urls: dict[str, str], timeout: float, pool_size: int = 64) -> BGMockClients:
        def rest(service: Service) -> RestClient:
            return RestClient(service.name, urls[service.name], timeout, pool_size)

        return cls(
            bank_a=BankClient(rest(BANK_A), BANK_A),
            bank_b=BankClient(rest(BANK_B), BANK_B),
            clearing=ClearingClient(rest(CLEARING)),
        )

    def bank(self, clearing_number: str) -> BankClient:
        """The client of the bank with this clearing number (Bank B for any other)."""
        return self.bank_a if clearing_number == BANK_A.clearing_number else self.bank_b

    def of(self, bank: Bank) -> BankClient:
        """The client of ``bank``."""
        return self.bank_a if bank is BANK_A else self.bank_b

    def close(self) -> None:
        for client in (self.bank_a, self.bank_b, self.clearing):
            client.close()
