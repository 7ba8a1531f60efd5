"""The one ``Settings`` the daemon loads: every slice composed, read from the
environment and an optional ``.env`` file (pydantic-settings).

Each field is defined once, in its slice, with its default and validation; a
component is handed only its slice (``settings.books``, ``settings.probes`` ...),
a copy holding the same attribute names as ``Settings``.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from bgmock_twin.settings.api import ApiSettings
from bgmock_twin.settings.books import BooksSettings
from bgmock_twin.settings.databases import DatabaseSettings
from bgmock_twin.settings.emulator import EmulatorSettings
from bgmock_twin.settings.endpoints import EndpointSettings
from bgmock_twin.settings.fields import env, mask_url, numeric_kind, plain_number
from bgmock_twin.settings.logs import LoggingSettings
from bgmock_twin.settings.probes import ProbeSettings
from bgmock_twin.settings.tracking import TrackingSettings

SliceT = TypeVar("SliceT", bound=BaseModel)


class Settings(EmulatorSettings, BooksSettings, TrackingSettings, ProbeSettings,
               LoggingSettings, ApiSettings, DatabaseSettings, EndpointSettings,
               BaseSettings):
    """The daemon's configuration. Each field names its environment variable."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        validate_default=True,
    )

    shutdown_grace_seconds: float = Field(
        8.0, gt=0, le=60, validation_alias=env("TWIN_SHUTDOWN_GRACE_SECONDS")
    )

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # "1_000", fullwidth digits and "true" parse as numbers; in a setting they are typos.
        kind = numeric_kind(cls.model_fields[info.field_name or ""].annotation) \
            if info.field_name in cls.model_fields else None
        return plain_number(value, kind) if kind is not None else value

    # --- the slices, one per component ----------------------------------------------
    def slice(self, kind: type[SliceT]) -> SliceT:
        """A copy of the fields ``kind`` declares (already validated here)."""
        return kind.model_construct(**{name: getattr(self, name) for name in kind.model_fields})

    @property
    def books(self) -> BooksSettings:
        return self.slice(BooksSettings)

    @property
    def tracking(self) -> TrackingSettings:
        return self.slice(TrackingSettings)

    @property
    def probes(self) -> ProbeSettings:
        return self.slice(ProbeSettings)

    @property
    def api(self) -> ApiSettings:
        return self.slice(ApiSettings)

    @property
    def emulator(self) -> EmulatorSettings:
        return self.slice(EmulatorSettings)

    def masked(self) -> dict[str, Any]:
        """Effective settings keyed by environment variable, secrets masked."""
        result: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            alias = field.validation_alias
            env_name = alias.choices[0] if isinstance(alias, AliasChoices) else name.upper()
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = mask_url(value.get_secret_value()) if "DB" in str(env_name) or \
                    "DATABASE" in str(env_name) else "**********"
            elif isinstance(value, Decimal | StrEnum):
                value = str(value)
            result[str(env_name)] = value
        return result


class SettingsError(Exception):
    """Settings could not be loaded; ``lines`` names each bad setting and why."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


def env_name(field_name: str) -> str:
    """The environment variable of a settings field (the field name if unknown)."""
    field = Settings.model_fields.get(field_name)
    alias = field.validation_alias if field is not None else None
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else field_name


def load_settings(**overrides: Any) -> Settings:
    """Load settings, turning pydantic's errors into one clear line per setting.

    The offending value is never echoed: it may be a password or a token.
    """
    try:
        return Settings(**overrides)
    except SourceError as exc:  # a value the source could not even decode
        field_name = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise SettingsError([f"invalid setting {env_name(field_name)}: cannot be parsed"]) \
            from None
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            name = env_name(".".join(str(part) for part in error["loc"]))
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"invalid setting {name}: {message}" if name
                         else f"invalid settings: {message}")
        raise SettingsError(lines) from None
