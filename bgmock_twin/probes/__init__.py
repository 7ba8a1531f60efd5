"""Health probes: what to check for each service, and the registry that runs them."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from bgmock_twin.bus.base import EventBus
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.clients.databases import select_one
from bgmock_twin.probes.health import Check, HealthRegistry, ServiceHealth

__all__ = ["Check", "HealthRegistry", "ServiceHealth", "build_checks"]


def build_checks(
    clients: BGMockClients,
    bus: EventBus | None,
    databases: dict[str, Engine],
) -> dict[str, Check]:
    """The check of every service: HTTP health, broker metadata, ``SELECT 1``."""
    checks: dict[str, Check] = {
        "bank_a": clients.bank_a.health,
        "bank_b": clients.bank_b.health,
        "clearing": clients.clearing.health,
    }
    if bus is not None:
        checks["kafka"] = bus.check
    for service, engine in databases.items():
        checks[service] = _database_check(engine)
    return checks


def _database_check(engine: Engine) -> Check:
    def check(_timeout: float) -> None:
        select_one(engine)

    return check
