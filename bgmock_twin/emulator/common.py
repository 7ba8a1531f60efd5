"""Small pieces both emulated services share: reading request bodies the way
Jackson does, and the JSON shapes of stored rows."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.engine import Row

from bgmock_twin.contract import (
    InvalidEvent,
    incoming_from_dict,
    outgoing_from_dict,
    parse_amount,
    response_from_dict,
)
from bgmock_twin.emulator.db import money
from bgmock_twin.emulator.web import ApiError, Request, Response

# Handler outcomes, the ``result`` label of bgmock_emulator_events_total.
HANDLED = "handled"
DUPLICATE = "duplicate"
UNKNOWN_TRANSACTION = "unknown_transaction"


def health(_request: Request) -> Response:
    return Response.text(200, "OK")


def opt_str(body: dict[str, Any], key: str) -> str | None:
    """A string field; Jackson also accepts numbers and booleans for a String."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | Decimal):
        return str(value)
    raise ApiError(400, f"JSON parse error: {key} must be a string")


def opt_amount(body: dict[str, Any], key: str) -> Decimal | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        amount = parse_amount(value)
        money(amount)
    except ValueError:
        raise ApiError(400, f"JSON parse error: {key} must be a number that fits "
                            "numeric(19,2)") from None
    return amount


def opt_uuid(body: dict[str, Any], key: str) -> uuid.UUID | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ApiError(400, f"JSON parse error: {key} must be a UUID") from None


def path_uuid(request: Request, name: str) -> uuid.UUID:
    try:
        return uuid.UUID(request.params[name])
    except ValueError:
        raise ApiError(400, f"{name} must be a UUID") from None


def query_amount(request: Request) -> Decimal:
    raw = request.query_value("amount")
    try:
        amount = Decimal(raw.strip())
    except InvalidOperation:
        raise ApiError(400, "amount must be a number") from None
    try:
        money(amount)
    except ValueError:
        raise ApiError(400, "amount must be a number that fits numeric(19,2)") from None
    return amount


def body_event(request: Request, kind: str) -> Any:
    """The event a REST door receives; 400 if it is not one."""
    body = request.json_object()
    try:
        event: Any
        if kind == "outgoing":
            event = outgoing_from_dict(body)
        elif kind == "incoming":
            event = incoming_from_dict(body)
        else:
            event = response_from_dict(body)
    except InvalidEvent as exc:
        raise ApiError(400, f"JSON parse error: {exc}") from None
    if kind != "response":
        opt_amount(body, "amount")
    return event


def outgoing_json(row: Row[Any]) -> dict[str, Any]:
    return {
        "transactionId": row.transaction_id,
        "fromClearingNumber": row.from_clearing_number,
        "fromAccountNumber": row.from_account_number,
        "toBankgoodNumber": row.to_bankgood_number,
        "amount": None if row.amount is None else money(row.amount),
        "status": row.status,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }


def incoming_json(row: Row[Any]) -> dict[str, Any]:
    return {
        "transactionId": row.transaction_id,
        "toClearingNumber": row.to_clearing_number,
        "toAccountNumber": row.to_account_number,
        "amount": None if row.amount is None else money(row.amount),
        "status": row.status,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }


def accepted(message: str, transaction_id: uuid.UUID | None) -> Response:
    return Response.json(202, {"message": message, "transactionId": transaction_id})

