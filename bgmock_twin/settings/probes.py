"""The probes' slice (how often and how long), and the REST timeout shared by
everything that calls BGMock's HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from bgmock_twin.settings.fields import SLICE_CONFIG, env


class ProbeSettings(BaseModel):
    model_config = SLICE_CONFIG

    health_interval_seconds: float = Field(
        10.0, ge=0.2, le=3600, validation_alias=env("TWIN_HEALTH_INTERVAL_SECONDS")
    )
    probe_timeout_seconds: float = Field(
        2.0, gt=0, le=60, validation_alias=env("TWIN_PROBE_TIMEOUT_SECONDS")
    )


class RestSettings(BaseModel):
    model_config = SLICE_CONFIG

    rest_timeout_seconds: float = Field(
        5.0, gt=0, le=120, validation_alias=env("TWIN_REST_TIMEOUT_SECONDS")
    )
