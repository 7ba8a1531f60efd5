"""The tracking slice: the synthetic load, the twin's accounts, the payment deadlines
and the ledger. ``TrackingSettings`` holds everything ``Tracking`` reads."""

from __future__ import annotations

from decimal import Decimal
from typing import Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from bgmock_twin.settings.bus import BusSettings
from bgmock_twin.settings.fields import MAX_AMOUNT, SLICE_CONFIG, database_url, env
from bgmock_twin.settings.fleet import FleetSettings
from bgmock_twin.settings.probes import RestSettings


class DeadlineSettings(BaseModel):
    """How long a payment may take, end to end and per step (tracking and books)."""

    model_config = SLICE_CONFIG

    payment_sla_seconds: float = Field(
        30.0, gt=0, le=3600, validation_alias=env("TWIN_PAYMENT_SLA_SECONDS")
    )
    step_deadline_seconds: float = Field(
        10.0, gt=0, le=3600, validation_alias=env("TWIN_STEP_DEADLINE_SECONDS")
    )


class LoadSettings(BaseModel):
    """The background canary payments and the accounts they use."""

    model_config = SLICE_CONFIG

    load_rate_per_second: float = Field(
        0.2, ge=0, le=1000, validation_alias=env("TWIN_LOAD_RATE"),
        description="Background canary payments per second; 0 disables it.",
    )
    load_amount_min: Decimal = Field(
        Decimal("1.00"), gt=0, le=MAX_AMOUNT, allow_inf_nan=False,
        validation_alias=env("TWIN_LOAD_AMOUNT_MIN")
    )
    load_amount_max: Decimal = Field(
        Decimal("50.00"), gt=0, le=MAX_AMOUNT, allow_inf_nan=False,
        validation_alias=env("TWIN_LOAD_AMOUNT_MAX")
    )
    account_prefix: str = Field(
        "TWIN", validation_alias=env("TWIN_ACCOUNT_PREFIX"),
        min_length=1, max_length=12, pattern=r"^[A-Z0-9]+$",
    )
    accounts_per_bank: int = Field(4, ge=1, le=100, validation_alias=env("TWIN_ACCOUNTS_PER_BANK"))
    account_initial_deposit: Decimal = Field(
        Decimal("1000000.00"), gt=0, le=MAX_AMOUNT, allow_inf_nan=False,
        validation_alias=env("TWIN_ACCOUNT_INITIAL_DEPOSIT")
    )
    max_in_flight_requests: int = Field(
        64, ge=1, le=4096, validation_alias=env("TWIN_MAX_IN_FLIGHT_REQUESTS"),
        description="Concurrent submissions; beyond it a due payment is dropped and counted.",
    )
    max_in_flight_kafka_payments: int = Field(
        1024, ge=1, le=100_000, validation_alias=env("TWIN_MAX_IN_FLIGHT_KAFKA_PAYMENTS"),
        description="Kafka-channel payments planned or being produced at once (a produce "
                    "does not wait for its delivery report); beyond it a due one is dropped "
                    "and counted.",
    )

    @model_validator(mode="after")
    def _amounts(self) -> Self:
        if self.load_amount_min > self.load_amount_max:
            raise ValueError("TWIN_LOAD_AMOUNT_MIN must not exceed TWIN_LOAD_AMOUNT_MAX")
        for amount in (self.load_amount_min, self.load_amount_max):
            if amount != amount.quantize(Decimal("0.01")):
                raise ValueError("TWIN_LOAD_AMOUNT_MIN/MAX take at most 2 decimals")
        return self


class LedgerSettings(BaseModel):
    """The twin's own database and how long it keeps payments."""

    model_config = SLICE_CONFIG

    twin_database_url: SecretStr = Field(
        SecretStr("sqlite:///bgmock-twin.db"), validation_alias=env("TWIN_DATABASE_URL")
    )
    retention_days: float = Field(
        7.0, gt=0, le=36_500, allow_inf_nan=False, validation_alias=env("TWIN_RETENTION_DAYS"),
        description="Days finished payments are kept (at most 100 years: retention is on).",
    )
    retention_max_payments: int = Field(
        1_000_000, ge=1000, validation_alias=env("TWIN_RETENTION_MAX_PAYMENTS")
    )
    ledger_spill_dir: str = Field(
        "auto", min_length=1, validation_alias=env("TWIN_LEDGER_SPILL_DIR"),
        description="Where ledger rows still unwritten at shutdown (a full disk, the "
                    "database gone) are kept as JSON lines until the next start reads "
                    "them back. `auto`: next to an SQLite ledger, the working directory for "
                    "PostgreSQL; the temporary directory when writing there fails.",
    )

    @field_validator("twin_database_url")
    @classmethod
    def _ledger_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        return database_url(value)


class RestPollingSettings(BaseModel):
    """Following payments without Kafka (``tracking.rest_follower``)."""

    model_config = SLICE_CONFIG

    rest_poll_budget_per_second: float = Field(
        50.0, ge=1, le=10_000, validation_alias=env("TWIN_REST_POLL_BUDGET"),
        description="Without Kafka: status GETs per second, at most, that the twin "
                    "sends BGMock to follow its payments by polling.",
    )


class TestHookSettings(BaseModel):
    """Test only: inert unless a test sets it (see ``tracking.testhooks``)."""

    model_config = SLICE_CONFIG

    test_pause_at: str = Field(
        "", validation_alias=env("TWIN_TEST_PAUSE_AT"),
        pattern=r"^((before_post|after_post|after_accept|before_produce):[1-9][0-9]{0,5})?$",
        description="TEST ONLY, never set in production: <point>:<n> makes the sender "
                    "stop for good at that point of its n-th payment (a test then kills "
                    "the daemon there).",
    )


class TrackingSettings(LedgerSettings, DeadlineSettings, LoadSettings, RestSettings,
                       RestPollingSettings, BusSettings, TestHookSettings, FleetSettings):
    """Everything ``Tracking`` reads (its own fields and those it shares)."""
