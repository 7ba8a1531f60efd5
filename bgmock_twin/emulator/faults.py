"""Fault injection for the emulator: what a broken BGMock looks like, on demand.

Per service (``bank_a``, ``bank_b``, ``clearing``): down (connection refused),
hang (accepts, never answers until released), latency, an error rate (500s),
garbage (200 with a body that is not JSON), paused Kafka consumers, a stalled
outbox publisher. For the transport: bus down. For the books: corrupt a balance,
drop an unpublished outbox row. Every switch is thread-safe and can be flipped
from Python (``apply``/the setters) or over the admin HTTP API.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import Any, Protocol

from bgmock_twin.contract import SERVICES, Bank, service_by_name
from bgmock_twin.emulator.web import FaultSource, HttpFaults
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

SERVICE_NAMES = tuple(service.name for service in SERVICES)  # bank_a, bank_b, clearing
MAX_LATENCY_SECONDS = 60.0


class FaultError(ValueError):
    """A fault request that makes no sense (unknown service, bad value)."""


@dataclass(frozen=True)
class ServiceFaults:
    down: bool = False
    hang: bool = False
    latency_seconds: float = 0.0
    error_rate: float = 0.0
    garbage: bool = False
    paused: bool = False
    stall_outbox: bool = False

    def http(self) -> HttpFaults:
        return HttpFaults(self.down, self.hang, self.latency_seconds, self.error_rate,
                          self.garbage)


class FaultHooks(Protocol):
    """What the emulator does when a switch flips (implemented by EmbeddedBGMock)."""

    def set_listening(self, service: str, up: bool) -> None: ...

    def set_bus_available(self, available: bool) -> None: ...

    def corrupt_balance(self, bank: str, account_number: str, delta: Decimal) -> Decimal: ...

    def drop_outbox_row(self, service: str) -> dict[str, Any] | None: ...


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FaultError(f"{name} must be true or false")
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise FaultError(f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise FaultError(f"{name} must be between {low:g} and {high:g}")
    return number


_VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "down": _flag,
    "hang": _flag,
    "garbage": _flag,
    "paused": _flag,
    "stall_outbox": _flag,
    "latency_seconds": lambda n, v: _number(n, v, 0.0, MAX_LATENCY_SECONDS),
    "error_rate": lambda n, v: _number(n, v, 0.0, 1.0),
}


class FaultController(FaultSource):
    """The emulator's fault switches."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._services = {name: ServiceFaults() for name in SERVICE_NAMES}
        self._bus_down = False
        self._hooks: FaultHooks | None = None

    def attach(self, hooks: FaultHooks) -> None:
        self._hooks = hooks

    # --- reading (hot paths: one lock, no allocation beyond the snapshot) ---------
    def service(self, service: str) -> ServiceFaults:
        with self._cond:
            return self._services[service]

    def http_faults(self, service: str) -> HttpFaults:
        return self.service(service).http()

    def consumers_paused(self, service: str) -> bool:
        return self.service(service).paused

    def outbox_stalled(self, service: str) -> bool:
        return self.service(service).stall_outbox

    @property
    def bus_down(self) -> bool:
        return self._bus_down

    def wait_while_hung(self, service: str, stop: threading.Event) -> None:
        with self._cond:
            while self._services[service].hang and not stop.is_set():
                self._cond.wait(0.2)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                "services": {name: asdict(state) for name, state in self._services.items()},
                "bus": {"down": self._bus_down},
            }

    # --- switching ------------------------------------------------------------------
    def apply(self, target: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply several switches at once: ``target`` is a service or ``"bus"``.

        ``apply("bank_b", {"down": True, "latency_seconds": 0.5})``,
        ``apply("bus", {"down": True})``. Returns the target's new state. Raises
        ``FaultError`` (nothing changed) on an unknown target, key or value.
        """
        if target == "bus":
            unknown = set(changes) - {"down"}
            if unknown:
                raise FaultError(f"unknown bus fault(s): {', '.join(sorted(unknown))}")
            if "down" in changes:
                self.set_bus_down(_flag("down", changes["down"]))
            return {"down": self._bus_down}
        if target not in SERVICE_NAMES:
            raise FaultError(
                f"unknown service {target!r}; expected one of {', '.join(SERVICE_NAMES)}")
        unknown = set(changes) - set(_VALIDATORS)
        if unknown:
            raise FaultError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        values = {key: _VALIDATORS[key](key, value) for key, value in changes.items()}
        with self._cond:
            before = self._services[target]
            after = replace(before, **values)
            self._services[target] = after
            self._cond.notify_all()
        if before.down != after.down and self._hooks is not None:
            self._hooks.set_listening(target, not after.down)
        if before != after:
            log.info("emulator_fault_changed", service=target, **{
                k: v for k, v in asdict(after).items() if getattr(before, k) != v})
        return asdict(after)

    def set_down(self, service: str, down: bool = True) -> None:
        self.apply(service, {"down": down})

    def set_hang(self, service: str, hang: bool = True) -> None:
        self.apply(service, {"hang": hang})

    def set_latency(self, service: str, seconds: float) -> None:
        self.apply(service, {"latency_seconds": seconds})

    def set_error_rate(self, service: str, fraction: float) -> None:
        self.apply(service, {"error_rate": fraction})

    def set_garbage(self, service: str, garbage: bool = True) -> None:
        self.apply(service, {"garbage": garbage})

    def pause_consumers(self, service: str, paused: bool = True) -> None:
        self.apply(service, {"paused": paused})

    def resume_consumers(self, service: str) -> None:
        self.apply(service, {"paused": False})

    def stall_outbox(self, service: str, stalled: bool = True) -> None:
        self.apply(service, {"stall_outbox": stalled})

    def set_bus_down(self, down: bool = True) -> None:
        with self._cond:
            changed = self._bus_down != down
            self._bus_down = down
            self._cond.notify_all()
        if self._hooks is not None:
            self._hooks.set_bus_available(not down)
        if changed:
            log.info("emulator_bus_fault_changed", down=down)

    def reset(self) -> None:
        """Clear every switch (books faults already done stay done)."""
        for service in SERVICE_NAMES:
            self.apply(service, asdict(ServiceFaults()))
        self.set_bus_down(False)

    # --- books ----------------------------------------------------------------------
    def corrupt_balance(
        self, bank: str, account_number: str, delta: Decimal | str | int
    ) -> Decimal:
        """Change an account's balance behind the services' back; returns the new balance.
        Raises ``KeyError`` if the account does not exist."""
        if not isinstance(service_by_name(bank), Bank):
            raise FaultError(f"unknown bank {bank!r}; expected bank_a or bank_b")
        try:
            amount = Decimal(str(delta))
        except ArithmeticError:
            raise FaultError("delta must be a number") from None
        if not amount.is_finite():
            raise FaultError("delta must be a finite number")
        if self._hooks is None:
            raise FaultError("the emulator is not running")
        balance = self._hooks.corrupt_balance(bank, account_number, amount)
        log.info("emulator_balance_corrupted", bank=bank, delta=str(amount))
        return balance

    def drop_outbox_row(self, service: str) -> dict[str, Any] | None:
        """Delete the oldest unpublished outbox row (an event lost before Kafka);
        returns what was dropped, or None if nothing was pending."""
        if service not in SERVICE_NAMES:
            raise FaultError(f"unknown service {service!r}")
        if self._hooks is None:
            raise FaultError("the emulator is not running")
        dropped = self._hooks.drop_outbox_row(service)
        log.info("emulator_outbox_row_dropped", service=service, dropped=dropped is not None)
        return dropped
