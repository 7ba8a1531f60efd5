"""The recent Kafka events the control API shows (``GET /api/v1/events``).

Every event the follower sees becomes one entry, kept as the objects it was made
of (most entries are never read, so even their mapping waits for ``select``, and
their text for ``public_entry``). An entry's ``origin`` is ``twin``, ``foreign``, ``pending``
(parked until its REST submission records the id) or ``invalid``; the tracker
updates it in place as it learns more. Not thread-safe: the tracker calls it
under its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from bgmock_twin.bus.base import Record
from bgmock_twin.contract import (
    Event,
    IncomingTransactionEvent,
    OutgoingTransactionEvent,
    TransactionResponseEvent,
)


class Entry:
    """One event as the follower saw it: the objects, not yet text (``as_dict``)."""

    __slots__ = ("event", "observed_at", "origin", "reason", "record")

    def __init__(self, record: Record, event: Event | None, observed_at: datetime,
                 origin: str = "twin", reason: str | None = None) -> None:
        self.record = record
        self.event = event
        self.observed_at = observed_at
        self.origin = origin
        self.reason = reason

    def as_dict(self) -> dict[str, Any]:
        """The entry's fields (values still objects; ``public_entry`` makes text)."""
        record, event = self.record, self.event
        entry: dict[str, Any] = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "transactionId": None,
            "status": None,
            "origin": self.origin,
        }
        if event is None:
            entry["reason"] = self.reason
        else:
            status = getattr(event, "status", None)
            entry["transactionId"] = event.transaction_id
            entry["status"] = status.value if status else None
        entry["observedAt"] = self.observed_at
        if isinstance(event, OutgoingTransactionEvent | IncomingTransactionEvent) and \
                event.amount is not None:
            entry["amount"] = event.amount
        if isinstance(event, TransactionResponseEvent) and event.message:
            entry["message"] = event.message[:200]
        return entry


class EventLog:
    """The last ``limit`` entries, oldest first."""

    def __init__(self, limit: int) -> None:
        self._entries: deque[Entry] = deque(maxlen=limit)
        # ``add(entry)``: the deque's own append (called for every event)
        self.add: Callable[[Entry], None] = self._entries.append

    def select(self, limit: int, topic: str | None = None,
               origin: str | None = None) -> list[dict[str, Any]]:
        """The newest ``limit`` entries matching the filters as mappings, newest first."""
        return [e.as_dict() for e in reversed(self._entries)
                if (topic is None or e.record.topic == topic)
                and (origin is None or e.origin == origin)][:limit]


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    return raw.decode("utf-8", "replace")[:64]


def invalid_entry(record: Record, reason: str, now_utc: datetime) -> Entry:
    """The entry of a message that is not a valid event."""
    return Entry(record, None, now_utc, "invalid", reason)


def public_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """An event entry as the API shows it: text for the id, key, time and amount."""
    key, tx, at = entry["key"], entry["transactionId"], entry["observedAt"]
    entry["key"] = _text(key) if isinstance(key, bytes) else key
    entry["transactionId"] = str(tx) if tx else None
    entry["observedAt"] = at.isoformat() if isinstance(at, datetime) else at
    amount = entry.get("amount")
    if isinstance(amount, Decimal):
        entry["amount"] = format(amount, "f")
    return entry
