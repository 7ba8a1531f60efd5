"""The one rule for a payment the source did not take: what is recorded, and whether
the refusal is certain.

A refusal is *ambiguous* when the request may still have reached BGMock: the books
then give the payment a range instead of an exact effect, and retention never folds
it into a carry-forward. The sender records the ambiguity with the rejection (the
ledger's ``refusal_ambiguous`` column, from ``refusal_of``); the books (in Python)
and retention (in SQL) both judge a rejected row with ``rejection_is_certain``,
never by its message.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import sqlalchemy as sa

from bgmock_twin.bus.base import BusError
from bgmock_twin.clients.rest import ServiceError
from bgmock_twin.contract import Channel

# ``ServiceError.reason`` labels after which the request may have arrived: no answer
# in time, a lost connection, an answer (a 202) that could not be read. An HTTP error
# status is the service's own refusal, and certain: BGMock's handlers are
# transactional, so a 500 (a null field, or a payment whose versioned write on the
# payer's account lost a race with a listener: optimistic locking) stored and
# reserved nothing.
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


# The furthest step of a payment rejected before any event (``Payment.state``).
REFUSED_STATES = ("submitted", "accepted")


def rejection_is_certain(channel: str, state: str, has_transaction_id: bool,
                         refusal_ambiguous: bool) -> bool:
    """Whether a payment rejected at ``state`` (one of ``REFUSED_STATES``) surely left
    every balance untouched. A REST payment the bank took (202 with an id) and then
    stored FAILED, unseen by the clearing, is certain whatever the refusal said;
    any other rejection is certain unless it was ambiguous."""
    if channel == Channel.REST.value and state == "accepted" and has_transaction_id:
        return True
    return not refusal_ambiguous


def certain_rejection_clause(channel: sa.ColumnElement[str], state: sa.ColumnElement[str],
                             transaction_id: sa.ColumnElement[str | None],
                             refusal_ambiguous: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """``rejection_is_certain`` as SQL on a rejected row's columns: every combination
    of its few inputs for which it holds, so the two can never disagree."""
    return sa.or_(*[
        sa.and_(channel == ch.value, state == st,
                transaction_id.is_not(None) if has_id else transaction_id.is_(None),
                refusal_ambiguous if ambiguous else sa.not_(refusal_ambiguous))
        for ch, st, has_id, ambiguous in itertools.product(
            Channel, REFUSED_STATES, (True, False), (True, False))
        if rejection_is_certain(ch.value, st, has_id, ambiguous)
    ])
