"""Events that overtook their payment's transaction id, held until the id is known.

The source bank's outbox may publish ``transactions.initiated`` before the sender
has recorded the id from the 202. While a REST submission is pending, such an event
is *parked* here (up to a limit), then claimed once the id is recorded or expired as
foreign. Not thread-safe: the tracker calls it under its own lock.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from bgmock_twin.contract import Event
from bgmock_twin.tracking.event_log import Entry


@dataclass(slots=True)
class ParkedEvent:
    topic: str
    event: Event
    mono: float  # when it was observed, kept when it is applied later
    utc: datetime
    entry: Entry  # its line in the event log, whose origin is settled later


class ParkedEvents:
    """The parked events by transaction id, oldest first, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_tx: OrderedDict[uuid.UUID, list[ParkedEvent]] = OrderedDict()
        self.count = 0

    def __bool__(self) -> bool:
        return bool(self._by_tx)

    def park(self, transaction_id: uuid.UUID, parked: ParkedEvent) -> bool:
        """Hold the event; False when the limit is reached (it is not held)."""
        if self.count >= self.limit:
            return False
        self._by_tx.setdefault(transaction_id, []).append(parked)
        self.count += 1
        return True

    def claim(self, transaction_id: uuid.UUID) -> list[ParkedEvent]:
        """The events held for this id, in arrival order; they are no longer held."""
        items = self._by_tx.pop(transaction_id, [])
        self.count -= len(items)
        return items

    def expire(self, observed_before: float, force: bool) -> list[ParkedEvent]:
        """Release the events observed before ``observed_before`` (every one when
        ``force``), oldest first."""
        expired: list[ParkedEvent] = []
        while self._by_tx:
            transaction_id, items = next(iter(self._by_tx.items()))
            if not force and items[0].mono > observed_before:
                break
            del self._by_tx[transaction_id]
            self.count -= len(items)
            expired += items
        return expired
