"""Asking a fleet of real replicas who holds a lease and whether its books are exact."""

from __future__ import annotations

from typing import Any

from tests.support.daemon import Daemon
from tests.support.ports import wait_for


def held(twins: list[Daemon], lease: str) -> list[str]:
    """The instance ids whose replicas say they hold ``lease``."""
    return [twin.get("/api/v1/status").json()["instance"] for twin in twins
            if twin.process.poll() is None
            and twin.metric("bgmock_fleet_lease_held", lease=lease) == 1.0]


def reconciled(twin: Daemon, timeout: float = 60) -> dict[str, Any]:
    """A reconciliation of the books holder with zero drift over every account."""
    def exact() -> dict[str, Any] | None:
        body: dict[str, Any] = twin.get("/api/v1/reconciliation").json()
        drift = body["checks"].get("balance_drift", {})
        return body if drift.get("status") == "ok" else None

    found: dict[str, Any] = wait_for(exact, timeout=timeout, interval=0.5, message="books exact")
    return found
