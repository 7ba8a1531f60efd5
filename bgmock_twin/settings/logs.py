"""The slice of log output: format and level."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from bgmock_twin.settings.fields import SLICE_CONFIG, env


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


class LoggingSettings(BaseModel):
    model_config = SLICE_CONFIG

    log_format: LogFormat = Field(LogFormat.AUTO, validation_alias=env("TWIN_LOG_FORMAT"))
    log_level: str = Field("INFO", validation_alias=env("TWIN_LOG_LEVEL"))

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level
