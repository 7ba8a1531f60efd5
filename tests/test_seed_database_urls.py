"""The seed's own database URLs, word for word in form, on real processes.

`DB_BANK_A=postgresql://bank_a_user:password@localhost:5432/bank_a_db` is what the
seed's `.env` and the Helm chart write. With SQLAlchemy 2.1 that form once crashed the
daemon at start (`No module named 'psycopg'`); here a real emulator keeps its books in
three real PostgreSQL databases, and a real `bgmock-twin run` in external mode reads
them and keeps its own ledger through plain `postgresql://` URLs.
"""

from __future__ import annotations

from pathlib import Path

import requests

from tests.support.daemon import running_daemon
from tests.support.emulator_process import running_emulator
from tests.support.ports import wait_for
from tests.support.postgres import PostgresServer

DATABASES = {"db_bank_a": "TWIN_EMULATOR_DB_BANK_A", "db_bank_b": "TWIN_EMULATOR_DB_BANK_B",
             "db_switch": "TWIN_EMULATOR_DB_SWITCH"}


PASSWORD = "seed-password"  # the local server trusts loopback, so any password is accepted


def _with_password(url: str) -> str:
    """The seed's shape, user:password@host, on a test database's URL."""
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def test_plain_postgresql_urls_start_the_daemon_and_report_the_databases_up(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    urls = {name: _with_password(postgres.create_database(f"seed_{name}")) for name in DATABASES}
    ledger_url = _with_password(postgres.create_database("seed_ledger"))
    assert all(url.startswith("postgresql://") for url in [*urls.values(), ledger_url])
    emulator_env = {DATABASES[name]: url for name, url in urls.items()}
    (tmp_path / "emulator").mkdir()
    (tmp_path / "twin").mkdir()
    with running_emulator(tmp_path / "emulator", **emulator_env) as bgmock:
        twin_env = {**bgmock.external_env(), "TWIN_DATABASE_URL": ledger_url,
                    "DB_BANK_A": urls["db_bank_a"], "DB_BANK_B": urls["db_bank_b"],
                    "DB_SWITCH": urls["db_switch"], "TWIN_LOAD_RATE": "0"}
        with running_daemon(tmp_path / "twin", **twin_env) as twin:
            def databases_up() -> bool:
                return all(twin.metric("bgmock_service_up", service=name) == 1.0
                           for name in DATABASES)

            wait_for(databases_up, timeout=60, interval=0.2, message="databases up")
            assert "No module named" not in twin.log()
            assert PASSWORD not in twin.log() and PASSWORD not in bgmock.log()
            # A domain refusal reaches the client as its status code, in the one error shape.
            refused = requests.post(twin.url + "/api/v1/emulator/faults",
                                    json={"target": "bank_a", "down": True}, timeout=10)
            assert refused.status_code == 409, refused.text
            assert refused.json() == {"error": "faults apply to the embedded emulator only"}
