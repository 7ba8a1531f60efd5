"""Shared fixtures: real components started by the tests themselves.

- ``kafka_broker``: a fresh Tansu broker per test module (in-memory, free port);
- ``postgres``: the local PostgreSQL (or a throwaway cluster), one per session;
- ``pg_database``: a fresh, empty database URL for one test;
- ``ledger_url``: a twin ledger URL, once on SQLite and once on PostgreSQL;
- ``chart``: the Helm chart loaded by the real Helm engine, once per module.
Every process started here is stopped in the fixture's teardown, also when a test fails.

Modules marked ``slow`` are collected first: ``make test``'s two xdist workers take
whole modules in collection order (``--no-loadscope-reorder``), so the long ones
start early and the many short ones fill in at the end, and both workers finish
together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import helm_python
import pytest

from tests.support.broker import TansuBroker, running_broker
from tests.support.helm import CHART
from tests.support.postgres import PostgresServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    slow = {item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::", 1)[0] not in slow)  # stable


@pytest.fixture(scope="session")
def component_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("component-logs")


@pytest.fixture(scope="module")
def kafka_broker(component_logs: Path) -> Iterator[TansuBroker]:
    with running_broker(component_logs) as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(postgres: PostgresServer) -> str:
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A twin ledger URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    """The chart loaded by the real Helm engine, once per test module."""
    loaded = helm_python.Chart.load(CHART)
    try:
        yield loaded
    finally:
        loaded.close()
