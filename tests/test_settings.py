"""Settings: seed names, validation with one clear line per setting, no secret leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgmock_twin.settings import Settings, SettingsError, load_settings, mask_url

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
