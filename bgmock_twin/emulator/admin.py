"""The emulator's admin HTTP API (its own port): flip faults with curl in a demo.

- ``GET  /_emulator``                       → URLs, bus, fault state
- ``GET  /_emulator/faults``                → every switch
- ``POST /_emulator/faults``                → ``{"service": "bank_b", "down": true, ...}``
  or ``{"service": "bus", "down": true}``; answers the target's new state. A
  service takes any of ``down``, ``hang``, ``garbage``, ``paused`` (its Kafka
  consumers), ``stallOutbox`` (booleans), ``latencySeconds`` (0-60) and
  ``errorRate`` (0-1)
- ``POST /_emulator/faults/reset``          → every switch off
- ``POST /_emulator/books/corrupt-balance`` → ``{"service": "bank_a", "accountNumber":
  "X", "delta": 10.5}``; answers the new balance (404 if no such account)
- ``POST /_emulator/books/drop-outbox-row`` → ``{"service": "clearing"}``; answers
  what was dropped (``dropped: null`` when nothing was pending)

Names are camelCase, as in the twin's own ``POST /api/v1/emulator/faults``; the
names of earlier versions (``latency_seconds``, ``error_rate``, ``stall_outbox``,
``bank``) are still accepted. Bad input is a 400 ``{"error": ...}``; nothing changes
then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from bgmock_twin.emulator.faults import FaultController, FaultError
from bgmock_twin.emulator.web import ApiError, Request, Response, Router

# wire name -> FaultController name; the old snake_case names pass through unchanged
SWITCH_NAMES = {"latencySeconds": "latency_seconds", "errorRate": "error_rate",
                "stallOutbox": "stall_outbox"}
WIRE_NAMES = {name: wire for wire, name in SWITCH_NAMES.items()}


def _switches(body: dict[str, Any]) -> dict[str, Any]:
    """The fault switches of a request body, by their ``FaultController`` names."""
    changes: dict[str, Any] = {}
    for key, value in body.items():
        name = SWITCH_NAMES.get(key, key)
        if name in changes:
            raise ApiError(400, f"{WIRE_NAMES.get(name, name)} is given twice", spring=False)
        changes[name] = value
    return changes


def _wire(state: Mapping[str, Any]) -> dict[str, Any]:
    """A switch state with camelCase names."""
    return {WIRE_NAMES.get(name, name): value for name, value in state.items()}


def _snapshot(faults: FaultController) -> dict[str, Any]:
    snapshot = faults.snapshot()
    return {"services": {name: _wire(state) for name, state in snapshot["services"].items()},
            "bus": snapshot["bus"]}


def _renamed(body: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``body`` with the old name of a field read as its new name."""
    if old not in body:
        return body
    if new in body:
        raise ApiError(400, f"give {new} or {old}, not both", spring=False)
    return {(new if key == old else key): value for key, value in body.items()}


def _fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(sorted(unknown))}", spring=False)


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{key} must be a non-empty string", spring=False)
    return value


def admin_router(faults: FaultController, urls: Callable[[], Mapping[str, str]],
                 bus_name: str) -> Router:
    """The admin routes over the emulator's fault controller; ``urls`` is read per request."""

    def overview(_request: Request) -> Response:
        return Response.json(200, {"urls": dict(urls()), "bus": bus_name,
                                   "faults": _snapshot(faults)})

    def get_faults(_request: Request) -> Response:
        return Response.json(200, _snapshot(faults))

    def post_faults(request: Request) -> Response:
        body = request.json_object()
        target = _text(body, "service")
        changes = _switches({k: v for k, v in body.items() if k != "service"})
        if not changes:
            raise ApiError(400, "name at least one fault to change", spring=False)
        try:
            state = faults.apply(target, changes)
        except FaultError as exc:
            raise ApiError(400, str(exc), spring=False) from None
        return Response.json(200, {"service": target, "state": _wire(state)})

    def reset(_request: Request) -> Response:
        faults.reset()
        return Response.json(200, _snapshot(faults))

    def corrupt_balance(request: Request) -> Response:
        body = _renamed(request.json_object(), "bank", "service")
        _fields(body, {"service", "accountNumber", "delta"})
        bank = _text(body, "service")
        account = _text(body, "accountNumber")
        delta = body.get("delta")
        if isinstance(delta, bool) or not isinstance(delta, int | str | Decimal):
            raise ApiError(400, "delta must be a number", spring=False)
        try:
            balance = faults.corrupt_balance(bank, account, delta)
        except FaultError as exc:
            raise ApiError(400, str(exc), spring=False) from None
        except KeyError:
            raise ApiError(404, "Account not found", spring=False) from None
        return Response.json(200, {"service": bank, "accountNumber": account,
                                   "balance": balance})

    def drop_outbox_row(request: Request) -> Response:
        body = request.json_object()
        _fields(body, {"service"})
        service = _text(body, "service")
        try:
            dropped = faults.drop_outbox_row(service)
        except FaultError as exc:
            raise ApiError(400, str(exc), spring=False) from None
        return Response.json(200, {"service": service, "dropped": dropped})

    router = Router()
    router.add("GET", "/_emulator", overview)
    router.add("GET", "/_emulator/faults", get_faults)
    router.add("POST", "/_emulator/faults", post_faults)
    router.add("POST", "/_emulator/faults/reset", reset)
    router.add("POST", "/_emulator/books/corrupt-balance", corrupt_balance)
    router.add("POST", "/_emulator/books/drop-outbox-row", drop_outbox_row)
    return router
