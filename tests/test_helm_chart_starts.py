"""The chart's rendered environment starts a real daemon.

A chart that renders but whose daemon cannot start is a failed chart: the default
`helm install` once crash-looped on its own `postgresql://` URLs. Here the real Helm
engine renders the chart, the container's environment is taken as the kubelet would
build it, only the host names are pointed at local stand-ins (a real emulator, a real
Tansu broker, the real local PostgreSQL with BGMock's own user names), and a real
`bgmock-twin run` must come up and report every configured database up.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import helm_python
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.support.broker import TansuBroker
from tests.support.daemon import running_daemon
from tests.support.emulator_process import EmulatorProcess, running_emulator
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer, writable_engine
from tests.test_helm_chart import (
    FULLNAME,
    bgmock_postgres_secrets,
    container_env,
    full_values,
    render,
)

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

DATABASE_SETTINGS = {"DB_BANK_A": "db_bank_a", "DB_BANK_B": "db_bank_b", "DB_SWITCH": "db_switch"}
REST_SETTINGS = {"BANK_A_URL": "bank_a", "BANK_B_URL": "bank_b", "CLEARING_SERVICE_URL": "clearing"}


def _ensure_role(postgres: PostgresServer, user: str) -> None:
    engine = writable_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :u"),
                                  {"u": user}).first()
            if exists is None:
                conn.execute(sa.text(f'CREATE ROLE "{user}" LOGIN'))
    finally:
        engine.dispose()


def _local(url: str, postgres: PostgresServer) -> str:
    """The chart's URL, word for word but for host, port and database."""
    parsed = make_url(url)
    assert parsed.drivername == "postgresql", "the chart writes the plain form"
    assert parsed.username
    _ensure_role(postgres, parsed.username)
    database = make_url(postgres.create_database("chart")).database
    scheme, _, rest = url.partition("://")
    credentials = rest.rpartition("@")[0]
    return f"{scheme}://{credentials}@127.0.0.1:{postgres.port}/{database}"


def _own_database(postgres: PostgresServer, url: str) -> None:
    """Give the ledger's database to its user, as a real deployment does (PostgreSQL
    15 and later let only the owner create tables in the public schema)."""
    parsed = make_url(url)
    engine = writable_engine(postgres.url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{parsed.database}" OWNER TO "{parsed.username}"'))
    finally:
        engine.dispose()


def _pointed_at_stand_ins(env: dict[str, str], bgmock: EmulatorProcess, broker: TansuBroker,
                          postgres: PostgresServer, tmp_path: Path) -> dict[str, str]:
    local = dict(env)
    for name, service in REST_SETTINGS.items():
        if name in local:
            local[name] = bgmock.urls[service]
    if "KAFKA_BOOTSTRAP_SERVERS" in local:
        local["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
    for name in (*DATABASE_SETTINGS, "TWIN_DATABASE_URL"):
        if local.get(name, "").startswith("postgresql://"):
            local[name] = _local(local[name], postgres)
    if local.get("TWIN_DATABASE_URL", "").startswith("sqlite:"):
        local["TWIN_DATABASE_URL"] = f"sqlite:///{tmp_path}/twin.db"
    local["TWIN_LISTEN_HOST"] = "127.0.0.1"  # loopback only; the chart says 0.0.0.0
    local.pop("TWIN_LISTEN_PORT")  # the test picks a free port
    return local


@pytest.mark.parametrize("values", [dict, full_values], ids=["default", "external"])
def test_the_rendered_environment_starts_a_daemon_with_its_databases_up(
        chart: helm_python.Chart, values: Callable[[], dict[str, Any]], tmp_path: Path,
        kafka_broker: TansuBroker, postgres: PostgresServer) -> None:
    env = container_env(render(chart, values() or None), bgmock_postgres_secrets())
    assert env["DB_BANK_A"].startswith("postgresql://")
    expected_up = {service for name, service in DATABASE_SETTINGS.items() if name in env}
    (tmp_path / "emulator").mkdir()
    (tmp_path / "twin").mkdir()
    with running_emulator(tmp_path / "emulator", KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
                          TWIN_KAFKA_SESSION_TIMEOUT_MS="6000") as bgmock:
        local = _pointed_at_stand_ins(env, bgmock, kafka_broker, postgres, tmp_path)
        with running_daemon(tmp_path / "twin", **local) as twin:
            def databases_up() -> bool:
                return all(twin.metric("bgmock_service_up", service=service) == 1.0
                           for service in expected_up)

            wait_for(databases_up, timeout=90, interval=0.25, message="databases up")
            assert twin.process.poll() is None
            assert "start_failed" not in twin.log()


def test_replicas_of_the_statefulset_start_with_their_own_identities_on_one_ledger(
        chart: helm_python.Chart, tmp_path: Path, kafka_broker: TansuBroker,
        postgres: PostgresServer) -> None:
    """replicaCount: 3 on a PostgreSQL ledger: the environments the kubelet would give
    pods -0 and -1 differ only in the instance id, and two real daemons started with
    them share one ledger database, each under its pod name and its own consumer
    group."""
    values = {"replicaCount": 3,
              "ledger": {"url": "postgresql://twin:pw@twin-postgres:5432/twin"}}
    manifests = render(chart, values)
    pods = [f"{FULLNAME}-{ordinal}" for ordinal in range(2)]
    envs = [container_env(manifests, bgmock_postgres_secrets(), pod_name=pod) for pod in pods]
    assert {k: v for k, v in envs[0].items() if envs[1].get(k) != v} == \
        {"TWIN_INSTANCE_ID": pods[0]}
    (tmp_path / "emulator").mkdir()
    with running_emulator(tmp_path / "emulator", KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
                          TWIN_KAFKA_SESSION_TIMEOUT_MS="6000") as bgmock:
        shared = _pointed_at_stand_ins(envs[0], bgmock, kafka_broker, postgres, tmp_path)
        ledger = shared["TWIN_DATABASE_URL"]
        assert ledger.startswith("postgresql://twin:pw@127.0.0.1:")
        _own_database(postgres, ledger)
        with ExitStack() as stack:
            twins = []
            for pod, env in zip(pods, envs, strict=True):
                (tmp_path / pod).mkdir()
                local = {**shared, "TWIN_INSTANCE_ID": env["TWIN_INSTANCE_ID"]}
                twins.append(stack.enter_context(running_daemon(tmp_path / pod, **local)))

            def ledgers_up() -> bool:
                return all(twin.get("/api/v1/status").json()["payments"]["ledger"]["available"]
                           for twin in twins)

            wait_for(ledgers_up, timeout=90, interval=0.25, message="both replicas on the ledger")
            for pod, twin in zip(pods, twins, strict=True):
                status = twin.get("/api/v1/status").json()
                assert status["payments"]["consumerGroup"] == f"digital-twin-simulator.{pod}"
                assert twin.metric("bgmock_twin_info", instance_id=pod) == 1.0
                assert twin.process.poll() is None
                assert "start_failed" not in twin.log()
                assert "ledger_write_failed" not in twin.log()
            # One canary for the fleet (the holder of its lease) ...
            def canary_runners() -> list[str] | None:
                held = [pod for pod, twin in zip(pods, twins, strict=True)
                        if twin.metric("bgmock_fleet_lease_held", lease="canary") == 1.0]
                return held or None

            assert len(wait_for(canary_runners, timeout=60, interval=0.5,
                                message="a canary runner")) == 1
            # ... and one ledger: both replicas' payments land in it, each under its pod
            # name (one payment asked of each replica, besides the canary's).
            for twin in twins:
                wait_for(lambda twin=twin: twin.post("/api/v1/transactions").status_code == 202,
                         timeout=60, interval=0.5, message="a payment sent by the replica")
            engine = writable_engine(ledger)
            try:
                def writers() -> set[str]:
                    with engine.connect() as conn:
                        return {row[0] for row in conn.execute(
                            sa.text("SELECT DISTINCT instance_id FROM twin_payments"))}

                wait_for(lambda: writers() == set(pods), timeout=60, interval=0.5,
                         message="payments of both replicas in the shared ledger")
            finally:
                engine.dispose()
