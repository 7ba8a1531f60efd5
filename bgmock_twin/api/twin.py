"""What the control API needs from the running daemon, and the typed values it gets.

``bgmock_twin.app.Twin`` implements ``TwinView``; the API renders these values in its
camelCase (``api/twin_routes.py``), so the daemon never shapes a wire body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from bgmock_twin.books.service import BooksStatus
from bgmock_twin.probes.health import ServiceHealth
from bgmock_twin.tracking.status import TrackingStatus


@dataclass(frozen=True, slots=True)
class TwinStatus:
    mode: str  # embedded or external
    following: str  # kafka, or rest_polling (no Kafka)
    instance: str
    version: str
    started_at: datetime
    services: dict[str, ServiceHealth]
    payments: TrackingStatus | None  # None when tracking does not run (no event bus)
    books: BooksStatus | None  # None without books


@dataclass(frozen=True, slots=True)
class BalanceCorruption:
    account_number: str
    delta: Decimal


@dataclass(frozen=True, slots=True)
class Fault:
    """Faults for one emulated service (``bank_a``, ``bank_b``, ``clearing``) or the bus.

    ``switches`` holds the switches to flip, by their ``FaultController`` names
    (``down``, ``latency_seconds``, ...); the books faults are separate.
    """

    service: str
    switches: dict[str, bool | float] = field(default_factory=dict)
    corrupt_balance: BalanceCorruption | None = None
    drop_outbox_row: bool = False


@dataclass(frozen=True, slots=True)
class OutboxDrop:
    row: dict[str, str] | None  # the row dropped, None when nothing was pending


@dataclass(frozen=True, slots=True)
class FaultResult:
    """What a fault changed; each part is None when it was not asked for."""

    service: str
    new_balance: Decimal | None = None
    outbox_drop: OutboxDrop | None = None
    applied: dict[str, Any] | None = None  # the new switch state of the service or bus


class TwinView(Protocol):
    """What the API needs from the daemon."""

    mode: str

    def is_ready(self) -> tuple[bool, list[str]]: ...

    def status(self) -> TwinStatus: ...

    def apply_fault(self, fault: Fault) -> FaultResult: ...
