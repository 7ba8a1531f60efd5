"""The daemon's settings as a deployment's environment gives them (Compose, Helm)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bgmock_twin.settings import Settings, load_settings


def env_name(field: Any) -> str:
    """The environment variable a settings field is read from."""
    return str(field.validation_alias.choices[0])


def daemon_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                    tmp_path: Path) -> Settings:
    """Load the daemon's settings from exactly this environment."""
    for field in Settings.model_fields.values():
        monkeypatch.delenv(env_name(field), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    return load_settings()
