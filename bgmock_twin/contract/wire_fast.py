"""The common events decoded in one pass with msgspec, for the Kafka follower's hot path.

``wire.decode_event_exact`` reads every event the contract allows (UTF-16 text, duplicate
keys, dates as arrays or text, amounts as numbers or strings, odd but valid ids...)
and names what is wrong with a bad one (``InvalidEvent.reason``); it costs about
10 us an event. The events the services really write are narrow: UTF-8 objects
with a canonical id, an amount, a status and null or array dates. ``fast_decode``
reads exactly those with typed msgspec structs (about 1-2 us, amounts straight from
the JSON text into ``Decimal``, never through ``float``) and returns None for
anything else - a decode error, a missing or null required field, a value its types
do not take - so ``decode_event`` then reads it the exact way and gives the same
event or the same ``InvalidEvent``. It never accepts what the exact reader refuses:
each value it returns passed the same checks (finite amounts, valid dates).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from bgmock_twin.contract.wire import (
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    Event,
    IncomingTransactionEvent,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
    decode_event_exact,
)

Date = list[int] | str | None
T = TypeVar("T")


class _Outgoing(msgspec.Struct, rename="camel"):
    transaction_id: uuid.UUID | None = None
    from_clearing_number: str | int | None = None
    from_account_number: str | int | None = None
    to_bankgood_number: str | int | None = None
    amount: Decimal | None = None
    status: Status | None = None
    created_at: Date = None
    updated_at: Date = None


class _Incoming(msgspec.Struct, rename="camel"):
    transaction_id: uuid.UUID | None = None
    to_clearing_number: str | int | None = None
    to_account_number: str | int | None = None
    amount: Decimal | None = None
    status: Status | None = None
    created_at: Date = None
    updated_at: Date = None


class _Response(msgspec.Struct, rename="camel"):
    transaction_id: uuid.UUID | None = None
    status: Status | None = None
    message: Any = None


class _NotFast(Exception):
    """A value the exact reader must judge."""


def _text(value: str | int | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _amount(value: Decimal | None) -> Decimal:
    if value is None or not value.is_finite():
        raise _NotFast
    return value


_ZEROS = {size: [0] * (7 - size) for size in range(3, 8)}


def _date(value: Date) -> datetime | None:
    """``parse_local_datetime`` for the forms msgspec typed already (ints only)."""
    if value is None:
        return None
    try:
        if isinstance(value, list):
            size = len(value)
            if not 3 <= size <= 7:
                raise _NotFast
            year, month, day, hour, minute, second, nanos = \
                value if size == 7 else value + _ZEROS[size]
            return datetime(year, month, day, hour, minute, second, nanos // 1000)
        return datetime.fromisoformat(value)
    except (ValueError, TypeError, OverflowError):
        raise _NotFast from None


def _maker(cls: type[T]) -> Callable[..., T]:
    """A constructor of the frozen dataclass ``cls`` from all its field values in order
    that fills its slots directly: the generated ``__init__`` of a frozen dataclass
    calls ``object.__setattr__`` once per field (about 3 us for an 8-field event,
    a third of that this way). The object is the same: equal, hashable, frozen."""
    setters = tuple(getattr(cls, f.name).__set__ for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    new = object.__new__

    def make(*values: Any) -> T:
        obj = new(cls)
        for set_value, value in zip(setters, values, strict=True):
            set_value(obj, value)
        return obj

    return make


_new_outgoing = _maker(OutgoingTransactionEvent)
_new_incoming = _maker(IncomingTransactionEvent)
_new_response = _maker(TransactionResponseEvent)


def _outgoing(e: _Outgoing) -> OutgoingTransactionEvent:
    if e.transaction_id is None:
        raise _NotFast
    return _new_outgoing(
        e.transaction_id, _text(e.from_clearing_number), _text(e.from_account_number),
        _text(e.to_bankgood_number), _amount(e.amount), e.status,
        _date(e.created_at), _date(e.updated_at))


def _incoming(e: _Incoming) -> IncomingTransactionEvent:
    if e.transaction_id is None:
        raise _NotFast
    return _new_incoming(
        e.transaction_id, _text(e.to_clearing_number), _text(e.to_account_number),
        _amount(e.amount), e.status, _date(e.created_at), _date(e.updated_at))


def _response(e: _Response) -> TransactionResponseEvent:
    if e.transaction_id is None or e.status is None:
        raise _NotFast
    message = e.message
    return _new_response(e.transaction_id, e.status,
                         message if isinstance(message, str) else None)


_DECODERS: dict[str, tuple[msgspec.json.Decoder[Any], Any]] = {
    TOPIC_INITIATED: (msgspec.json.Decoder(_Outgoing), _outgoing),
    TOPIC_FORWARDED: (msgspec.json.Decoder(_Incoming), _incoming),
    TOPIC_PROCESSED: (msgspec.json.Decoder(_Response), _response),
    TOPIC_COMPLETED: (msgspec.json.Decoder(_Response), _response),
}


def fast_decode(topic: str, raw: bytes | None) -> Event | None:
    """The event in ``raw`` when it is one of the common forms; None otherwise (the
    exact reader decides)."""
    found = _DECODERS.get(topic)
    if found is None or raw is None:
        return None
    decoder, build = found
    try:
        event: Event = build(decoder.decode(raw))
    except (msgspec.DecodeError, _NotFast):
        return None
    return event


def decode_event(topic: str, raw: bytes | None) -> Event:
    """Decode a record value of one of the four topics or raise ``InvalidEvent``
    (``wire.decode_event_exact``, the common forms first read by ``fast_decode``)."""
    event = fast_decode(topic, raw)
    return event if event is not None else decode_event_exact(topic, raw)
