"""The slice of BGMock's own databases, read (never written) by probes and books."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, field_validator

from bgmock_twin.settings.fields import SLICE_CONFIG, database_url, env


class DatabaseSettings(BaseModel):
    """``DB_*`` (the seed's names): unset means the database is not read."""

    model_config = SLICE_CONFIG

    db_bank_a: SecretStr | None = Field(None, validation_alias=env("DB_BANK_A"))
    db_bank_b: SecretStr | None = Field(None, validation_alias=env("DB_BANK_B"))
    db_switch: SecretStr | None = Field(None, validation_alias=env("DB_SWITCH"))

    @field_validator("db_bank_a", "db_bank_b", "db_switch")
    @classmethod
    def _bgmock_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        return database_url(value)

    def database_urls(self) -> dict[str, SecretStr | None]:
        """Each URL by its database's name (``Service.database``: ``db_bank_a`` ...)."""
        return {"db_bank_a": self.db_bank_a, "db_bank_b": self.db_bank_b,
                "db_switch": self.db_switch}


class StatementSettings(BaseModel):
    """How long one statement against a BGMock database may run."""

    model_config = SLICE_CONFIG

    db_statement_timeout_ms: int = Field(
        2000, ge=100, le=60000, validation_alias=env("TWIN_DB_STATEMENT_TIMEOUT_MS")
    )
