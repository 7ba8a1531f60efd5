"""Settings fuzzing: any value of any variable loads or fails with one clear line."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgmock_twin.settings import Settings, SettingsError, env_name, load_settings

ENV_NAMES = [env_name(name) for name in Settings.model_fields]
SECRETISH = "S3cr3t-Passw0rd"

values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "-1", "0", "1e309", "nan", "inf", "true", "[]", "[1,", "{}",
                     "99999999999999999999", "0.001", "1.005", "http://", "a:b:c",
                     f"postgresql://u:{SECRETISH}@h:notaport/db"]),
)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> None:
    for name in list(os.environ):
        if name.startswith(("TWIN_", "KAFKA_", "BANK_", "DB_", "CLEARING_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(ENV_NAMES), value=values)
def test_every_value_loads_or_names_the_setting(name: str, value: str) -> None:
    if "\x00" in value:
        return  # the OS cannot carry NUL in an environment variable
    os.environ[name] = value
    try:
        load_settings()
    except SettingsError as exc:
        assert exc.lines, "an error without a message"
        for line in exc.lines:
            assert line.startswith(("invalid setting ", "invalid settings: ")), line
            assert SECRETISH not in line
        assert any(name in line for line in exc.lines) or name in {
            "BANK_A_URL", "BANK_B_URL", "CLEARING_SERVICE_URL", "TWIN_LISTEN_HOST",
            "TWIN_MODE", "TWIN_LOAD_AMOUNT_MIN", "TWIN_LOAD_AMOUNT_MAX",
        }, (name, exc.lines)
    finally:
        del os.environ[name]
