"""Settings: seed names, validation with one clear line per setting, no secret leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgmock_twin.clients.databases import readonly_engine, select_one
from bgmock_twin.database_urls import resolve_database_url
from bgmock_twin.settings import (
    ApiSettings,
    BooksSettings,
    DatabaseSettings,
    EmulatorSettings,
    EndpointSettings,
    LoggingSettings,
    ProbeSettings,
    Settings,
    SettingsError,
    TrackingSettings,
    load_settings,
    mask_url,
)
from bgmock_twin.tracking.ledger import Ledger
from tests.support.daemon import daemon_env

SECRET = "hunter2-very-secret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("TWIN_", "KAFKA_", "BANK_", "DB_", "CLEARING_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_embedded_with_seed_group() -> None:
    settings = load_settings()
    assert settings.embedded
    assert settings.kafka_group_id == "digital-twin-simulator"
    assert settings.listen_port == 8080
    assert settings.health_interval_seconds == 10
    assert settings.consumer_group.startswith("digital-twin-simulator.")


def test_seed_variable_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANK_A_URL", "http://localhost:30081")
    monkeypatch.setenv("BANK_B_URL", "http://localhost:30082/")
    monkeypatch.setenv("CLEARING_SERVICE_URL", "http://localhost:30083")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
    monkeypatch.setenv("KAFKA_GROUP_ID", "my-sim")
    monkeypatch.setenv("DB_BANK_A", f"postgresql://bank_a_user:{SECRET}@pg/bank_a_db")
    settings = load_settings()
    assert not settings.embedded
    assert settings.bank_b_url == "http://localhost:30082"
    assert settings.kafka_group_id == "my-sim"
    assert settings.db_bank_a is not None
    assert SECRET not in repr(settings)
    assert SECRET not in json.dumps(settings.masked(), default=str)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TWIN_LISTEN_PORT=9191\nKAFKA_GROUP_ID=from-dotenv\n")
    settings = load_settings()
    assert settings.listen_port == 9191
    assert settings.kafka_group_id == "from-dotenv"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TWIN_LISTEN_PORT", "70000", "TWIN_LISTEN_PORT"),
        ("TWIN_LISTEN_PORT", "eighty", "TWIN_LISTEN_PORT"),
        ("TWIN_HEALTH_INTERVAL_SECONDS", "0", "TWIN_HEALTH_INTERVAL_SECONDS"),
        ("BANK_A_URL", "ftp://bank", "BANK_A_URL"),
        ("KAFKA_BOOTSTRAP_SERVERS", "no-port-here", "KAFKA_BOOTSTRAP_SERVERS"),
        ("TWIN_LOG_LEVEL", "LOUD", "TWIN_LOG_LEVEL"),
        ("TWIN_MODE", "sideways", "TWIN_MODE"),
        ("DB_BANK_A", f"not a url {SECRET}", "DB_BANK_A"),
        ("TWIN_LOAD_AMOUNT_MIN", "1.234", "TWIN_LOAD_AMOUNT_MIN"),
    ],
)
def test_invalid_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert any(expected in line for line in err.value.lines), err.value.lines
    assert SECRET not in str(err.value)


def test_partial_bgmock_urls_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BANK_A_URL", "http://bank-a:8080")
    with pytest.raises(SettingsError, match="CLEARING_SERVICE_URL"):
        load_settings()


def test_listening_beyond_loopback_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWIN_LISTEN_HOST", "0.0.0.0")
    with pytest.raises(SettingsError, match="TWIN_CONTROL_TOKEN"):
        load_settings()
    monkeypatch.setenv("TWIN_CONTROL_TOKEN", SECRET)
    assert load_settings().listen_host == "0.0.0.0"
    monkeypatch.delenv("TWIN_CONTROL_TOKEN")
    monkeypatch.setenv("TWIN_ALLOW_UNAUTHENTICATED", "true")
    assert load_settings().allow_unauthenticated


def test_mask_url_hides_only_the_password() -> None:
    masked = mask_url(f"postgresql+psycopg2://clearing_user:{SECRET}@postgres-service-clearing:5432/clearing_db")
    assert SECRET not in masked
    assert "clearing_user" in masked and "clearing_db" in masked


def test_lag_groups_accept_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWIN_LAG_GROUPS", "g1, g2")
    assert load_settings().lag_groups == ["g1", "g2"]
    assert "bank-service-forwarded.01" in Settings.model_fields["lag_groups"].default_factory()  # type: ignore[misc]


def test_default_lag_groups_are_the_real_services_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract's corrections: the clearing has one group per listener and no
    group named ``clearing-service``; the banks one per topic and clearing number."""
    monkeypatch.delenv("TWIN_LAG_GROUPS", raising=False)
    assert load_settings().lag_groups == [
        "bank-service-forwarded.01", "bank-service-completed.01",
        "bank-service-forwarded.02", "bank-service-completed.02",
        "clearing-service-initiated", "clearing-service-processed",
    ]


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("TWIN_", "KAFKA_", "BANK_", "DB_", "CLEARING_"))}
    return subprocess.run(
        [sys.executable, "-m", "bgmock_twin", *args], env={**base, **env}, cwd=cwd,
        capture_output=True, text=True, timeout=60,
    )


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    result = _cli(["check-config"], {
        "TWIN_CONTROL_TOKEN": SECRET,
        "DB_SWITCH": f"postgresql://clearing_user:{SECRET}@db/clearing_db",
    }, tmp_path)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["TWIN_CONTROL_TOKEN"] == "**********"
    assert effective["DB_SWITCH"] == "postgresql://clearing_user:***@db/clearing_db"
    assert effective["(derived) mode"] == "embedded"
    assert SECRET not in result.stdout + result.stderr


def test_run_with_bad_settings_exits_with_one_clear_line(tmp_path: Path) -> None:
    result = _cli(["run"], {"TWIN_LISTEN_PORT": "-1", "DB_BANK_A": f"garbage {SECRET}"}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert any(line.startswith("bgmock-twin: invalid setting TWIN_LISTEN_PORT:") for line in lines)
    assert any(line.startswith("bgmock-twin: invalid setting DB_BANK_A:") for line in lines)
    assert SECRET not in result.stderr


# --- database URLs: every form a user writes resolves to the driver we ship ----------------

SEED_URL = "postgresql://bank_a_user:password@localhost:5432/bank_a_db"  # the seed's .env


@pytest.mark.parametrize(
    "url",
    [SEED_URL, "postgres://bank_a_user:password@localhost:5432/bank_a_db",
     "postgresql+psycopg2://bank_a_user:password@localhost:5432/bank_a_db"],
)
@pytest.mark.parametrize("setting", ["DB_BANK_A", "DB_BANK_B", "DB_SWITCH", "TWIN_DATABASE_URL"])
def test_every_postgres_url_form_resolves_to_psycopg2(
    monkeypatch: pytest.MonkeyPatch, url: str, setting: str
) -> None:
    monkeypatch.setenv(setting, url)
    field = {"DB_BANK_A": "db_bank_a", "DB_BANK_B": "db_bank_b", "DB_SWITCH": "db_switch",
             "TWIN_DATABASE_URL": "twin_database_url"}[setting]
    value = getattr(load_settings(), field)
    assert value is not None
    assert value.get_secret_value() == url  # kept as written; engines resolve it
    resolved = resolve_database_url(value.get_secret_value())
    assert resolved.drivername == "postgresql+psycopg2"
    assert (resolved.username, resolved.password, resolved.host, resolved.port,
            resolved.database) == ("bank_a_user", "password", "localhost", 5432, "bank_a_db")
    resolved.get_dialect().import_dbapi()  # the driver is really installed


@pytest.mark.parametrize(
    ("url", "why"),
    [("postgresql+psycopg://u:p@h/db", "driver 'psycopg' is not installed"),
     ("postgresql+asyncpg://u:p@h/db", "driver 'asyncpg' is not installed"),
     ("mysql://u:p@h/db", "backend 'mysql' is not supported"),
     ("sqlite+aiosqlite:///x.db", "SQLite driver 'aiosqlite'"),
     ("not a url at all", "must be a database URL")],
)
def test_an_unusable_database_url_is_a_startup_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    monkeypatch.setenv("TWIN_DATABASE_URL", url.replace("p@", f"{SECRET}@"))
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith("invalid setting TWIN_DATABASE_URL: ")
    assert why in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_seed_url_opens_a_real_ledger_and_a_real_readonly_engine(pg_database: str) -> None:
    assert pg_database.startswith("postgresql://"), pg_database  # the seed's form, as is
    engine = readonly_engine(pg_database, 1000)
    try:
        select_one(engine)
    finally:
        engine.dispose()
    ledger = Ledger(pg_database)
    try:
        assert ledger.open()
    finally:
        ledger.close()


# --- the control token: empty never means "no authentication" ------------------------------

@pytest.mark.parametrize(
    ("token", "why"),
    [("", "must not be empty"), ("   ", "must not be empty"), ("\t\n", "must not be empty"),
     (" padded-token-0123456789 ", "whitespace"), ("short-token", "at least 16")],
)
def test_an_empty_blank_padded_or_short_token_is_refused(
    monkeypatch: pytest.MonkeyPatch, token: str, why: str
) -> None:
    monkeypatch.setenv("TWIN_LISTEN_HOST", "0.0.0.0")
    monkeypatch.setenv("TWIN_CONTROL_TOKEN", token)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert len(caught.value.lines) == 1
    assert caught.value.lines[0].startswith("invalid setting TWIN_CONTROL_TOKEN: ")
    assert why in caught.value.lines[0]


def test_an_empty_token_stops_the_real_daemon_with_exit_2(tmp_path: Path) -> None:
    env = daemon_env(tmp_path, TWIN_CONTROL_TOKEN="", TWIN_LISTEN_HOST="0.0.0.0")
    result = subprocess.run([sys.executable, "-m", "bgmock_twin", "run"], env=env,
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "TWIN_CONTROL_TOKEN" in result.stderr + result.stdout
    assert "control_api_listening" not in result.stderr + result.stdout


def test_each_component_gets_only_its_slice() -> None:
    settings = load_settings(reconcile_interval_seconds=12, listen_port=9191,
                             probe_timeout_seconds=3, kafka_group_id="g", instance_id="i1")
    books = settings.books
    assert isinstance(books, BooksSettings) and not isinstance(books, Settings)
    assert books.reconcile_interval_seconds == 12 and books.consumer_group == "g.i1"
    assert books.lag_groups == settings.lag_groups
    assert not hasattr(books, "listen_port") and not hasattr(books, "control_token")
    assert settings.api.listen_port == 9191 and not hasattr(settings.api, "db_bank_a")
    assert settings.probes.probe_timeout_seconds == 3
    assert settings.tracking.consumer_group == "g.i1"
    # every setting lives in exactly one place: a slice, or the daemon's own
    sliced = set().union(*(kind.model_fields for kind in (
        BooksSettings, TrackingSettings, ProbeSettings, ApiSettings, EmulatorSettings,
        LoggingSettings, DatabaseSettings, EndpointSettings)))
    assert set(Settings.model_fields) - sliced == {"shutdown_grace_seconds"}
