"""The books slice: how often reconciliation and consumer lag run, which groups are
watched and the SLO figures the checks hold the outboxes to. ``BooksSettings``
holds everything ``Books`` reads."""

from __future__ import annotations

from json import loads
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from bgmock_twin.contract.groups import BANK_GROUPS, CLEARING_GROUPS
from bgmock_twin.settings.bus import BusSettings
from bgmock_twin.settings.databases import StatementSettings
from bgmock_twin.settings.fields import SLICE_CONFIG, env
from bgmock_twin.settings.probes import RestSettings
from bgmock_twin.settings.tracking import DeadlineSettings

# The real services' groups (bgmock_twin.contract.groups): a group named here that
# does not exist on the broker is reported as missing, never silently empty.
DEFAULT_BANK_GROUPS = BANK_GROUPS
DEFAULT_CLEARING_GROUPS = tuple(CLEARING_GROUPS.values())


class SloSettings(BaseModel):
    """Alert thresholds, exported as ``bgmock_slo_target{slo}`` so rules carry no
    magic numbers; the books hold the outboxes to two of them."""

    model_config = SLICE_CONFIG

    slo_success_ratio: float = Field(
        0.99, gt=0, le=1, validation_alias=env("TWIN_SLO_SUCCESS_RATIO")
    )
    slo_p95_seconds: float = Field(10.0, gt=0, validation_alias=env("TWIN_SLO_P95_SECONDS"))
    slo_outbox_pending: float = Field(
        100, ge=0, validation_alias=env("TWIN_SLO_OUTBOX_PENDING")
    )
    slo_outbox_age_seconds: float = Field(
        30, gt=0, validation_alias=env("TWIN_SLO_OUTBOX_AGE_SECONDS")
    )
    slo_consumer_lag: float = Field(1000, ge=0, validation_alias=env("TWIN_SLO_CONSUMER_LAG"))


class ReconcileSettings(BaseModel):
    """The books' own settings."""

    model_config = SLICE_CONFIG

    reconcile_interval_seconds: float = Field(
        30.0, ge=1, le=3600, validation_alias=env("TWIN_RECONCILE_INTERVAL_SECONDS")
    )
    lag_interval_seconds: float = Field(
        15.0, ge=1, le=3600, validation_alias=env("TWIN_LAG_INTERVAL_SECONDS")
    )
    lag_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [*DEFAULT_BANK_GROUPS, *DEFAULT_CLEARING_GROUPS],
        validation_alias=env("TWIN_LAG_GROUPS"),
        description="Consumer groups whose lag is exported (JSON list or comma separated).",
    )

    lag_window_samples: int = Field(
        10, ge=2, le=1000, validation_alias=env("TWIN_LAG_WINDOW_SAMPLES"),
        description="Readings in each group's sliding window (Burrow's intervals): a "
                    "group is judged STALL, STOP or WARN only over a full window.",
    )

    @field_validator("lag_groups", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                try:
                    return loads(value)
                except ValueError:
                    raise ValueError("must be a JSON list or comma separated") from None
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


class BooksSettings(SloSettings, ReconcileSettings, StatementSettings, DeadlineSettings,
                    RestSettings, BusSettings):
    """Everything ``Books`` reads (its own fields and those it shares)."""
