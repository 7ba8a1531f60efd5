"""The one rule for a payment the source did not take: what is recorded, and whether
the refusal is certain.

A refusal is *ambiguous* when the request may still have reached BGMock: the books
then give the payment a range instead of an exact effect, and retention never folds
it into a carry-forward. The sender records the ambiguity with the rejection (the
ledger's ``refusal_ambiguous`` column); the books and retention read that column,
never the message.
"""

from __future__ import annotations

from dataclasses import dataclass

from bgmock_twin.bus.base import BusError
from bgmock_twin.clients.rest import ServiceError

# ``ServiceError.reason`` labels after which the request may have arrived: no answer
# in time, a lost connection, an answer (a 202) that could not be read. An HTTP error
# status is the service's own refusal.
AMBIGUOUS_REASONS = frozenset({"timeout", "connection", "bad_body"})


@dataclass(frozen=True, slots=True)
class Refusal:
    message: str  # the payment's message: who refused and why, bounded
    ambiguous: bool


def refusal_of(error: ServiceError | BusError) -> Refusal:
    """The refusal a send that failed with ``error`` records. A Kafka write that
    could not even be queued is held ambiguous too (as the books always have)."""
    if isinstance(error, ServiceError):
        return Refusal(f"not accepted by {error.service}: {error.reason}",
                       ambiguous=error.maybe_processed or error.reason in AMBIGUOUS_REASONS)
    return Refusal(f"not produced: {str(error)[:120]}", ambiguous=True)
