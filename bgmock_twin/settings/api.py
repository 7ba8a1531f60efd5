"""The control API's slice: where it listens, who may change things, request limits."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from bgmock_twin.settings.fields import SLICE_CONFIG, env, is_loopback

MIN_CONTROL_TOKEN_LENGTH = 16


class ApiSettings(BaseModel):
    model_config = SLICE_CONFIG

    listen_host: str = Field("127.0.0.1", validation_alias=env("TWIN_LISTEN_HOST"))
    listen_port: int = Field(8080, ge=0, le=65535, validation_alias=env("TWIN_LISTEN_PORT"))
    control_token: SecretStr | None = Field(None, validation_alias=env("TWIN_CONTROL_TOKEN"))
    allow_unauthenticated: bool = Field(
        False, validation_alias=env("TWIN_ALLOW_UNAUTHENTICATED"),
        description="Allow listening beyond loopback without a control token.",
    )
    max_request_bytes: int = Field(
        65536, ge=1024, le=10_485_760, validation_alias=env("TWIN_MAX_REQUEST_BYTES")
    )
    api_rate_limit_per_second: float = Field(
        20.0, gt=0, le=100000, validation_alias=env("TWIN_API_RATE_LIMIT"),
        description="Mutating control-API requests per second per client (burst: 5x).",
    )
    api_read_rate_limit_per_second: float = Field(
        50.0, gt=0, le=100000, validation_alias=env("TWIN_API_READ_RATE_LIMIT"),
        description="Reading control-API requests per second per client (burst: 2x); "
        "/healthz, /readyz and /metrics are not limited.",
    )
    api_read_timeout_seconds: float = Field(
        10.0, ge=1, le=300, allow_inf_nan=False,
        validation_alias=env("TWIN_API_READ_TIMEOUT_SECONDS"),
        description="Time a client has to send a request's headers, and then its body.",
    )
    api_max_connections: int = Field(
        512, ge=16, le=10000, validation_alias=env("TWIN_API_MAX_CONNECTIONS"),
        description="Open control-API connections; beyond, the oldest idle one is closed.",
    )
    heavy_reads: int = Field(
        2, ge=1, le=64, validation_alias=env("TWIN_API_HEAVY_READS"),
        description="Transaction exports (CSV, NDJSON) and pages over 1000 items served "
        "at a time; more are answered 429 with Retry-After.",
    )
    docs: bool = Field(
        True, validation_alias=env("TWIN_API_DOCS"),
        description="Serve the Swagger UI (/docs) and ReDoc (/redoc), their assets from "
        "the twin itself; /openapi.json is always served.",
    )

    @field_validator("control_token")
    @classmethod
    def _control_token(cls, value: SecretStr | None) -> SecretStr | None:
        # Set-but-empty must not mean "no authentication", and a token with blanks
        # around it could never be presented: both are mistakes, refused here.
        if value is None:
            return None
        token = value.get_secret_value()
        if not token.strip():
            raise ValueError("must not be empty; unset it to run without a token on loopback")
        if token != token.strip():
            raise ValueError("must not start or end with whitespace")
        if len(token) < MIN_CONTROL_TOKEN_LENGTH:
            raise ValueError(f"must be at least {MIN_CONTROL_TOKEN_LENGTH} characters long")
        return value

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Self:
        if (
            not is_loopback(self.listen_host)
            and self.control_token is None
            and not self.allow_unauthenticated
        ):
            raise ValueError(
                "TWIN_LISTEN_HOST is beyond loopback: set "
                "TWIN_CONTROL_TOKEN (or TWIN_ALLOW_UNAUTHENTICATED=true to accept the risk)"
            )
        return self

    @property
    def token(self) -> str | None:
        """The control token in clear, for the API's comparison only."""
        return self.control_token.get_secret_value() if self.control_token is not None else None
