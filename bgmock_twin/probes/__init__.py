"""Health probes: what to check for each service, the registry that runs them, and
the jobs that run them on the probes' settings slice."""

from __future__ import annotations

from functools import partial

from sqlalchemy.engine import Engine

from bgmock_twin.bus.base import EventBus
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.clients.databases import select_one
from bgmock_twin.probes.health import Check, HealthRegistry, ServiceHealth
from bgmock_twin.scheduler import Job
from bgmock_twin.settings import ProbeSettings

__all__ = ["Check", "HealthRegistry", "ServiceHealth", "build_checks", "probe_jobs",
           "registry_for"]


def registry_for(settings: ProbeSettings) -> HealthRegistry:
    return HealthRegistry(settings.probe_timeout_seconds)


def probe_jobs(health: HealthRegistry, settings: ProbeSettings) -> list[Job]:
    """One job per registered service, every ``TWIN_HEALTH_INTERVAL_SECONDS``, the
    first run at once."""
    return [Job(f"probe_{service}", partial(health.probe, service),
                settings.health_interval_seconds, run_now=True)
            for service in health.services]


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
