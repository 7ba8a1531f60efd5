"""What the checks read: plain values, as the sources return them (no I/O here)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from bgmock_twin.books.model import AccountKey
from bgmock_twin.contract import Channel
from bgmock_twin.tracking.lifecycle import Outcome


@dataclass(frozen=True, slots=True)
class AccountReading:
    account: AccountKey
    balance: Decimal
    reserved: Decimal
    source: str  # "rest" or "sql"


@dataclass(frozen=True, slots=True)
class PendingSum:
    """An account whose reserved balance differs from its PENDING outgoing amounts."""

    account: AccountKey
    reserved: Decimal
    pending: Decimal

    @property
    def difference(self) -> Decimal:
        return self.reserved - self.pending


@dataclass(frozen=True, slots=True)
class OutboxStats:
    service: str
    unpublished: int
    oldest_created_at: datetime | None  # naive UTC, as the services store it


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A transaction row as a service stores it (for stale and integrity checks)."""

    service: str
    table: str  # outgoing_transactions or incoming_transactions
    transaction_id: uuid.UUID
    account_number: str | None
    amount: Decimal | None
    status: str | None
    created_at: datetime | None
    bankgood_number: str | None = None  # outgoing rows: the payee's bankgood number


@dataclass(frozen=True, slots=True)
class FinishedPayment:
    """A finished synthetic payment whose statuses are compared across services."""

    payment_id: str
    transaction_id: uuid.UUID
    channel: Channel
    outcome: Outcome  # success, failed or rejected
    source_service: str  # bank_a / bank_b
    destination_service: str | None  # None when the destination bank is unknown
    intended_at: datetime | None = None  # UTC, when the twin meant to send it
