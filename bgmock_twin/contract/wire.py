"""The BGMock wire: topics, event shapes and how to read and write them.

Pure functions only (no I/O), shared by the twin, its clients and the emulator so
both sides speak exactly one dialect. See ``shared/bgmock-contract.md``:
- values are Spring Kafka JSON with a ``__TypeId__`` header; unknown fields are
  ignored;
- ``LocalDateTime`` arrives as ``null``, an array with trailing zero parts dropped,
  or an ISO-8601 string without zone;
- amounts are JSON numbers and are read as ``Decimal``, never ``float``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

TOPIC_INITIATED = "transactions.initiated"
TOPIC_FORWARDED = "transactions.forwarded"
TOPIC_PROCESSED = "transactions.processed"
TOPIC_COMPLETED = "transactions.completed"
TOPICS = (TOPIC_INITIATED, TOPIC_FORWARDED, TOPIC_PROCESSED, TOPIC_COMPLETED)
PARTITIONS = 3

TYPE_ID_HEADER = "__TypeId__"
TYPE_OUTGOING = "com.bankgood.bank.event.OutgoingTransactionEvent"
TYPE_INCOMING = "com.bankgood.bank.event.IncomingTransactionEvent"
TYPE_RESPONSE = "com.bankgood.bank.event.TransactionResponseEvent"

CENT = Decimal("0.01")


class Status(StrEnum):
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


class InvalidEvent(ValueError):
    """A message that is not a valid event; ``reason`` is a short, bounded label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class OutgoingTransactionEvent:
    """On ``transactions.initiated``; also the body of ``POST /bank/transaction/outgoing``."""

    transaction_id: uuid.UUID | None
    from_clearing_number: str | None
    from_account_number: str | None
    to_bankgood_number: str | None
    amount: Decimal | None
    status: Status | None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class IncomingTransactionEvent:
    """On ``transactions.forwarded``."""

    transaction_id: uuid.UUID
    to_clearing_number: str | None
    to_account_number: str | None
    amount: Decimal
    status: Status | None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TransactionResponseEvent:
    """On ``transactions.processed`` and ``transactions.completed``."""

    transaction_id: uuid.UUID
    status: Status
    message: str | None = None


Event = OutgoingTransactionEvent | IncomingTransactionEvent | TransactionResponseEvent


# --- reading -------------------------------------------------------------------------
def parse_local_datetime(value: Any) -> datetime | None:
    """Read a Jackson ``LocalDateTime``: null, an array or an ISO string without zone."""
    if value is None:
        return None
    if isinstance(value, list):
        if not 3 <= len(value) <= 7 or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in value
        ):
            raise ValueError("date array must hold 3 to 7 integers")
        parts = list(value) + [0] * (7 - len(value))
        year, month, day, hour, minute, second, nanos = parts
        return datetime(year, month, day, hour, minute, second, nanos // 1000)
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    raise ValueError("date must be null, an array or a string")


def parse_amount(value: Any) -> Decimal:
    """Amounts are JSON numbers; ``loads_json`` already made them ``Decimal``."""
    if isinstance(value, bool) or value is None:
        raise ValueError("amount must be a number")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int | str):
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise ValueError("amount is not a number") from None
    else:
        raise ValueError("amount must be a number")
    if not amount.is_finite():
        raise ValueError("amount must be finite")
    return amount


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every call, as ``json.loads`` does for its defaults: building one per
# call costs about a third of decoding a small event.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def loads_json(raw: bytes | bytearray | str) -> Any:
    """JSON with every non-integer number read as ``Decimal`` (otherwise exactly
    ``json.loads``: bytes in UTF-8/16/32, a BOM in a str is an error)."""
    if isinstance(raw, str):
        if raw.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", raw, 0)
        text = raw
    elif isinstance(raw, bytes | bytearray):
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    else:
        raise TypeError(f"the JSON object must be str, bytes or bytearray, "
                        f"not {type(raw).__name__}")
    return _DECODER.decode(text)


def _uuid(obj: dict[str, Any], key: str) -> uuid.UUID:
    value = obj.get(key)
    if value is None:
        raise InvalidEvent("missing_field", key)
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidEvent("bad_field", key) from None


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise InvalidEvent("bad_field", key)
    return str(value)


_STATUSES = {status.value: status for status in Status}


def _status(obj: dict[str, Any], key: str = "status", required: bool = True) -> Status | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidEvent("missing_field", key)
        return None
    status = _STATUSES.get(value) if isinstance(value, str) else None
    if status is None:
        raise InvalidEvent("bad_field", key)
    return status


def _amount(obj: dict[str, Any], required: bool) -> Decimal | None:
    value = obj.get("amount")
    if value is None:
        if required:
            raise InvalidEvent("missing_field", "amount")
        return None
    try:
        return parse_amount(value)
    except ValueError:
        raise InvalidEvent("bad_field", "amount") from None


def _date(obj: dict[str, Any], key: str) -> datetime | None:
    try:
        return parse_local_datetime(obj.get(key))
    except (ValueError, TypeError, OverflowError):
        raise InvalidEvent("bad_field", key) from None


def _object(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise InvalidEvent("empty")
    try:
        obj = loads_json(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidEvent("not_json") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object")
    return obj


def outgoing_from_dict(obj: dict[str, Any]) -> OutgoingTransactionEvent:
    return OutgoingTransactionEvent(
        transaction_id=_uuid(obj, "transactionId"),
        from_clearing_number=_optional_str(obj, "fromClearingNumber"),
        from_account_number=_optional_str(obj, "fromAccountNumber"),
        to_bankgood_number=_optional_str(obj, "toBankgoodNumber"),
        amount=_amount(obj, required=True),
        status=_status(obj, required=False),
        created_at=_date(obj, "createdAt"),
        updated_at=_date(obj, "updatedAt"),
    )


def incoming_from_dict(obj: dict[str, Any]) -> IncomingTransactionEvent:
    amount = _amount(obj, required=True)
    assert amount is not None
    return IncomingTransactionEvent(
        transaction_id=_uuid(obj, "transactionId"),
        to_clearing_number=_optional_str(obj, "toClearingNumber"),
        to_account_number=_optional_str(obj, "toAccountNumber"),
        amount=amount,
        status=_status(obj, required=False),
        created_at=_date(obj, "createdAt"),
        updated_at=_date(obj, "updatedAt"),
    )


def response_from_dict(obj: dict[str, Any]) -> TransactionResponseEvent:
    status = _status(obj, required=True)
    assert status is not None
    message = obj.get("message")
    return TransactionResponseEvent(
        transaction_id=_uuid(obj, "transactionId"),
        status=status,
        message=message if isinstance(message, str) else None,
    )


def decode_event_exact(topic: str, raw: bytes | None) -> Event:
    """Decode a record value of one of the four topics or raise ``InvalidEvent``:
    every form the contract allows, each bad value named. ``decode_event``
    (``wire_fast``) tries the common forms faster first."""
    obj = _object(raw)
    if topic == TOPIC_INITIATED:
        return outgoing_from_dict(obj)
    if topic == TOPIC_FORWARDED:
        return incoming_from_dict(obj)
    if topic in (TOPIC_PROCESSED, TOPIC_COMPLETED):
        return response_from_dict(obj)
    raise InvalidEvent("unknown_topic", topic)


# --- writing -------------------------------------------------------------------------
def format_amount(amount: Decimal) -> str:
    """A JSON number literal for an amount, as Jackson writes a ``BigDecimal``."""
    return format(amount, "f")


def format_local_datetime_array(value: datetime | None) -> list[int] | None:
    """Jackson's array form of a ``LocalDateTime``, trailing zero parts dropped."""
    if value is None:
        return None
    parts = [
        value.year, value.month, value.day, value.hour, value.minute,
        value.second, value.microsecond * 1000,
    ]
    while len(parts) > 5 and parts[-1] == 0:
        parts.pop()
    return parts


def dumps_json(obj: Any) -> bytes:
    """JSON with ``Decimal`` written as a number literal (never through ``float``)."""
    return _encode(obj).encode()


def _encode(obj: Any) -> str:
    if isinstance(obj, Decimal):
        return format_amount(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(
            f"{json.dumps(str(k))}:{_encode(v)}" for k, v in obj.items()
        ) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(_encode(v) for v in obj) + "]"
    if isinstance(obj, uuid.UUID | StrEnum):
        return json.dumps(str(obj))
    if isinstance(obj, datetime):
        return json.dumps(obj.isoformat())
    return json.dumps(obj)


def event_to_dict(event: Event, dates: str = "null") -> dict[str, Any]:
    """The camelCase JSON object of an event.

    ``dates`` chooses how ``LocalDateTime`` fields are written: ``"null"`` (what the
    banks put on Kafka), ``"array"`` (Jackson timestamps) or ``"iso"`` (REST).
    """

    def date(value: datetime | None) -> Any:
        if dates == "null" or value is None:
            return None
        if dates == "array":
            return format_local_datetime_array(value)
        return value.isoformat()

    if isinstance(event, OutgoingTransactionEvent):
        return {
            "transactionId": event.transaction_id,
            "fromClearingNumber": event.from_clearing_number,
            "fromAccountNumber": event.from_account_number,
            "toBankgoodNumber": event.to_bankgood_number,
            "amount": event.amount,
            "status": event.status,
            "createdAt": date(event.created_at),
            "updatedAt": date(event.updated_at),
        }
    if isinstance(event, IncomingTransactionEvent):
        return {
            "transactionId": event.transaction_id,
            "toClearingNumber": event.to_clearing_number,
            "toAccountNumber": event.to_account_number,
            "amount": event.amount,
            "status": event.status,
            "createdAt": date(event.created_at),
            "updatedAt": date(event.updated_at),
        }
    return {
        "transactionId": event.transaction_id,
        "status": event.status,
        "message": event.message,
    }


def type_id(event: Event) -> str:
    if isinstance(event, OutgoingTransactionEvent):
        return TYPE_OUTGOING
    if isinstance(event, IncomingTransactionEvent):
        return TYPE_INCOMING
    return TYPE_RESPONSE


def encode_event(event: Event, dates: str = "null") -> tuple[bytes, dict[str, bytes]]:
    """The value bytes and headers a Spring Kafka producer would write."""
    return dumps_json(event_to_dict(event, dates)), {TYPE_ID_HEADER: type_id(event).encode()}
