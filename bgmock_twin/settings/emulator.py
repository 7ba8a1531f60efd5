"""The embedded emulator's slice: where it listens and which databases it uses."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, field_validator

from bgmock_twin.settings.fields import SLICE_CONFIG, database_url, env


class EmulatorSettings(BaseModel):
    model_config = SLICE_CONFIG

    emulator_host: str = Field("127.0.0.1", validation_alias=env("TWIN_EMULATOR_HOST"))
    emulator_db_bank_a: SecretStr | None = Field(
        None, validation_alias=env("TWIN_EMULATOR_DB_BANK_A"),
        description="Database of the emulated Bank A; unset means an in-memory SQLite.",
    )
    emulator_db_bank_b: SecretStr | None = Field(
        None, validation_alias=env("TWIN_EMULATOR_DB_BANK_B")
    )
    emulator_db_switch: SecretStr | None = Field(
        None, validation_alias=env("TWIN_EMULATOR_DB_SWITCH")
    )
    emulator_outbox_interval_seconds: float = Field(
        1.0, gt=0, le=60, validation_alias=env("TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS")
    )
    # The time between a bank loading an account and writing it back (BGMock's
    # round trips to its database between Hibernate's load and its flush): the
    # window in which a concurrent write makes the optimistic lock fail.
    emulator_flush_window_seconds: float = Field(
        0.002, ge=0, le=1, validation_alias=env("TWIN_EMULATOR_FLUSH_WINDOW_SECONDS")
    )
    # Fixed ports of ``bgmock-twin emulate`` (the seed's NodePorts); the daemon's
    # embedded mode picks free ports instead.
    emulator_bank_a_port: int = Field(
        30081, ge=0, le=65535, validation_alias=env("TWIN_EMULATOR_BANK_A_PORT")
    )
    emulator_bank_b_port: int = Field(
        30082, ge=0, le=65535, validation_alias=env("TWIN_EMULATOR_BANK_B_PORT")
    )
    emulator_clearing_port: int = Field(
        30083, ge=0, le=65535, validation_alias=env("TWIN_EMULATOR_CLEARING_PORT")
    )
    emulator_admin_port: int = Field(
        30090, ge=0, le=65535, validation_alias=env("TWIN_EMULATOR_ADMIN_PORT"),
        description="Port of the emulator's fault admin API in `bgmock-twin emulate`.",
    )

    @field_validator("emulator_db_bank_a", "emulator_db_bank_b", "emulator_db_switch")
    @classmethod
    def _emulator_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        return database_url(value)
