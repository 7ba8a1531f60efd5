"""Every setting of the daemon, in one place.

Read from the environment and an optional ``.env`` file (pydantic-settings). The
seed simulator's variable names (``KAFKA_BOOTSTRAP_SERVERS``, ``BANK_A_URL``,
``DB_BANK_A`` ...) are kept so existing ``.env`` files work; everything the twin
adds is prefixed ``TWIN_``. Database URLs and the control token are ``SecretStr``
so that no log line, status answer or ``check-config`` output can show them.
"""

from __future__ import annotations

import socket
from decimal import Decimal
from enum import StrEnum
from json import loads
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError
from sqlalchemy.engine import make_url

from bgmock_twin.database_urls import resolve_database_url

MAX_AMOUNT = Decimal("1000000000000")
MIN_CONTROL_TOKEN_LENGTH = 16
DEFAULT_BANK_GROUPS = (
    "bank-service-forwarded.01",
    "bank-service-completed.01",
    "bank-service-forwarded.02",
    "bank-service-completed.02",
)
DEFAULT_CLEARING_GROUPS = ("clearing-service",)


class Mode(StrEnum):
    AUTO = "auto"
    EMBEDDED = "embedded"
    EXTERNAL = "external"


class LogFormat(StrEnum):
    AUTO = "auto"
    JSON = "json"
    CONSOLE = "console"


def _env(name: str) -> Any:
    """Field option binding a field to exactly one environment variable name."""
    return AliasChoices(name)


class Settings(BaseSettings):
    """The daemon's configuration. Each field names its environment variable."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        populate_by_name=True,
        validate_default=True,
    )

    # --- BGMock endpoints (the seed simulator's names) -------------------------------
    kafka_bootstrap_servers: str | None = Field(
        None, validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers (host:port[,host:port]). Unset in embedded "
        "mode means the emulator carries events over an in-process bus.",
    )
    kafka_group_id: str = Field(
        "digital-twin-simulator", validation_alias=_env("KAFKA_GROUP_ID"), min_length=1,
        description="Base consumer group of the twin; the instance id is appended.",
    )
    bank_a_url: str | None = Field(None, validation_alias=_env("BANK_A_URL"))
    bank_b_url: str | None = Field(None, validation_alias=_env("BANK_B_URL"))
    clearing_url: str | None = Field(None, validation_alias=_env("CLEARING_SERVICE_URL"))
    db_bank_a: SecretStr | None = Field(None, validation_alias=_env("DB_BANK_A"))
    db_bank_b: SecretStr | None = Field(None, validation_alias=_env("DB_BANK_B"))
    db_switch: SecretStr | None = Field(None, validation_alias=_env("DB_SWITCH"))

    # --- the daemon itself ---------------------------------------------------------
    mode: Mode = Field(Mode.AUTO, validation_alias=_env("TWIN_MODE"))
    instance_id: str = Field(
        default_factory=socket.gethostname, validation_alias=_env("TWIN_INSTANCE_ID"),
        min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    listen_host: str = Field("127.0.0.1", validation_alias=_env("TWIN_LISTEN_HOST"))
    listen_port: int = Field(8080, ge=0, le=65535, validation_alias=_env("TWIN_LISTEN_PORT"))
    control_token: SecretStr | None = Field(None, validation_alias=_env("TWIN_CONTROL_TOKEN"))
    allow_unauthenticated: bool = Field(
        False, validation_alias=_env("TWIN_ALLOW_UNAUTHENTICATED"),
        description="Allow listening beyond loopback without a control token.",
    )
    max_request_bytes: int = Field(
        65536, ge=1024, le=10_485_760, validation_alias=_env("TWIN_MAX_REQUEST_BYTES")
    )
    api_rate_limit_per_second: float = Field(
        20.0, gt=0, le=100000, validation_alias=_env("TWIN_API_RATE_LIMIT"),
        description="Mutating control-API requests per second per client (burst: 5x).",
    )
    log_format: LogFormat = Field(LogFormat.AUTO, validation_alias=_env("TWIN_LOG_FORMAT"))
    log_level: str = Field("INFO", validation_alias=_env("TWIN_LOG_LEVEL"))
    shutdown_grace_seconds: float = Field(
        8.0, gt=0, le=60, validation_alias=_env("TWIN_SHUTDOWN_GRACE_SECONDS")
    )

    # --- probes -------------------------------------------------------------------
    health_interval_seconds: float = Field(
        10.0, ge=0.2, le=3600, validation_alias=_env("TWIN_HEALTH_INTERVAL_SECONDS")
    )
    probe_timeout_seconds: float = Field(
        2.0, gt=0, le=60, validation_alias=_env("TWIN_PROBE_TIMEOUT_SECONDS")
    )
    rest_timeout_seconds: float = Field(
        5.0, gt=0, le=120, validation_alias=_env("TWIN_REST_TIMEOUT_SECONDS")
    )

    # --- synthetic load and tracking -----------------------------------------------
    load_rate_per_second: float = Field(
        0.2, ge=0, le=1000, validation_alias=_env("TWIN_LOAD_RATE"),
        description="Background canary payments per second; 0 disables it.",
    )
    load_amount_min: Decimal = Field(
        Decimal("1.00"), gt=0, le=MAX_AMOUNT, allow_inf_nan=False,
        validation_alias=_env("TWIN_LOAD_AMOUNT_MIN")
    )
    load_amount_max: Decimal = Field(
        Decimal("50.00"), gt=0, le=MAX_AMOUNT, allow_inf_nan=False,
        validation_alias=_env("TWIN_LOAD_AMOUNT_MAX")
    )
    account_prefix: str = Field(
        "TWIN", validation_alias=_env("TWIN_ACCOUNT_PREFIX"),
        min_length=1, max_length=12, pattern=r"^[A-Z0-9]+$",
    )
    accounts_per_bank: int = Field(4, ge=1, le=100, validation_alias=_env("TWIN_ACCOUNTS_PER_BANK"))
    account_initial_deposit: Decimal = Field(
        Decimal("1000000.00"), gt=0, le=MAX_AMOUNT, allow_inf_nan=False,
        validation_alias=_env("TWIN_ACCOUNT_INITIAL_DEPOSIT")
    )
    max_in_flight_requests: int = Field(
        64, ge=1, le=4096, validation_alias=_env("TWIN_MAX_IN_FLIGHT_REQUESTS"),
        description="Concurrent submissions; beyond it a due payment is dropped and counted.",
    )
    payment_sla_seconds: float = Field(
        30.0, gt=0, le=3600, validation_alias=_env("TWIN_PAYMENT_SLA_SECONDS")
    )
    step_deadline_seconds: float = Field(
        10.0, gt=0, le=3600, validation_alias=_env("TWIN_STEP_DEADLINE_SECONDS")
    )
    twin_database_url: SecretStr = Field(
        SecretStr("sqlite:///bgmock-twin.db"), validation_alias=_env("TWIN_DATABASE_URL")
    )
    retention_days: float = Field(7.0, gt=0, validation_alias=_env("TWIN_RETENTION_DAYS"))
    retention_max_payments: int = Field(
        1_000_000, ge=1000, validation_alias=_env("TWIN_RETENTION_MAX_PAYMENTS")
    )
    kafka_session_timeout_ms: int = Field(
        10000, ge=1000, le=300000, validation_alias=_env("TWIN_KAFKA_SESSION_TIMEOUT_MS")
    )

    # --- books -------------------------------------------------------------------
    reconcile_interval_seconds: float = Field(
        30.0, ge=1, le=3600, validation_alias=_env("TWIN_RECONCILE_INTERVAL_SECONDS")
    )
    lag_interval_seconds: float = Field(
        15.0, ge=1, le=3600, validation_alias=_env("TWIN_LAG_INTERVAL_SECONDS")
    )
    db_statement_timeout_ms: int = Field(
        2000, ge=100, le=60000, validation_alias=_env("TWIN_DB_STATEMENT_TIMEOUT_MS")
    )
    lag_groups: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [*DEFAULT_BANK_GROUPS, *DEFAULT_CLEARING_GROUPS],
        validation_alias=_env("TWIN_LAG_GROUPS"),
        description="Consumer groups whose lag is exported (JSON list or comma separated).",
    )

    # --- alert thresholds, exported as bgmock_slo_target{slo} so rules carry no magic numbers
    slo_success_ratio: float = Field(
        0.99, gt=0, le=1, validation_alias=_env("TWIN_SLO_SUCCESS_RATIO")
    )
    slo_p95_seconds: float = Field(10.0, gt=0, validation_alias=_env("TWIN_SLO_P95_SECONDS"))
    slo_outbox_pending: float = Field(
        100, ge=0, validation_alias=_env("TWIN_SLO_OUTBOX_PENDING")
    )
    slo_outbox_age_seconds: float = Field(
        30, gt=0, validation_alias=_env("TWIN_SLO_OUTBOX_AGE_SECONDS")
    )
    slo_consumer_lag: float = Field(1000, ge=0, validation_alias=_env("TWIN_SLO_CONSUMER_LAG"))

    # --- embedded emulator ----------------------------------------------------------
    emulator_host: str = Field("127.0.0.1", validation_alias=_env("TWIN_EMULATOR_HOST"))
    emulator_db_bank_a: SecretStr | None = Field(
        None, validation_alias=_env("TWIN_EMULATOR_DB_BANK_A"),
        description="Database of the emulated Bank A; unset means an in-memory SQLite.",
    )
    emulator_db_bank_b: SecretStr | None = Field(
        None, validation_alias=_env("TWIN_EMULATOR_DB_BANK_B")
    )
    emulator_db_switch: SecretStr | None = Field(
        None, validation_alias=_env("TWIN_EMULATOR_DB_SWITCH")
    )
    emulator_outbox_interval_seconds: float = Field(
        1.0, gt=0, le=60, validation_alias=_env("TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS")
    )
    # Fixed ports of ``bgmock-twin emulate`` (the seed's NodePorts); the daemon's
    # embedded mode picks free ports instead.
    emulator_bank_a_port: int = Field(
        30081, ge=0, le=65535, validation_alias=_env("TWIN_EMULATOR_BANK_A_PORT")
    )
    emulator_bank_b_port: int = Field(
        30082, ge=0, le=65535, validation_alias=_env("TWIN_EMULATOR_BANK_B_PORT")
    )
    emulator_clearing_port: int = Field(
        30083, ge=0, le=65535, validation_alias=_env("TWIN_EMULATOR_CLEARING_PORT")
    )
    emulator_admin_port: int = Field(
        30090, ge=0, le=65535, validation_alias=_env("TWIN_EMULATOR_ADMIN_PORT"),
        description="Port of the emulator's fault admin API in `bgmock-twin emulate`.",
    )

    # --- validation ----------------------------------------------------------------
    @field_validator("bank_a_url", "bank_b_url", "clearing_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")) or len(value) < 10:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be host:port[,host:port...]")
        return value.strip()

    @field_validator(
        "db_bank_a", "db_bank_b", "db_switch", "twin_database_url",
        "emulator_db_bank_a", "emulator_db_bank_b", "emulator_db_switch",
    )
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        # Kept as written (check-config shows it so); every engine resolves it the same way.
        resolve_database_url(value.get_secret_value())  # ValueError says why
        return value

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

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

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

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.load_amount_min > self.load_amount_max:
            raise ValueError("TWIN_LOAD_AMOUNT_MIN must not exceed TWIN_LOAD_AMOUNT_MAX")
        for amount in (self.load_amount_min, self.load_amount_max):
            if amount != amount.quantize(Decimal("0.01")):
                raise ValueError("TWIN_LOAD_AMOUNT_MIN/MAX take at most 2 decimals")
        urls = [self.bank_a_url, self.bank_b_url, self.clearing_url]
        if self.mode is Mode.EXTERNAL and not all(urls):
            raise ValueError(
                "TWIN_MODE=external needs BANK_A_URL, BANK_B_URL and CLEARING_SERVICE_URL"
            )
        if self.mode is Mode.AUTO and any(urls) and not all(urls):
            raise ValueError(
                "set all of BANK_A_URL, BANK_B_URL and CLEARING_SERVICE_URL, or none "
                "of them for embedded mode"
            )
        if (
            not _is_loopback(self.listen_host)
            and self.control_token is None
            and not self.allow_unauthenticated
        ):
            raise ValueError(
                "TWIN_LISTEN_HOST is beyond loopback: set "
                "TWIN_CONTROL_TOKEN (or TWIN_ALLOW_UNAUTHENTICATED=true to accept the risk)"
            )
        return self

    # --- derived --------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when the daemon runs the emulator instead of talking to a real BGMock."""
        if self.mode is Mode.AUTO:
            return not (self.bank_a_url and self.bank_b_url and self.clearing_url)
        return self.mode is Mode.EMBEDDED

    @property
    def consumer_group(self) -> str:
        """The twin's own consumer group: one per instance (KMinion style)."""
        return f"{self.kafka_group_id}.{self.instance_id}"

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


def _is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


def mask_url(url: str) -> str:
    """A database URL safe to print: the password is replaced, the rest kept."""
    try:
        parsed = make_url(url)
    except Exception:
        return "**********"
    if parsed.password is None:
        return parsed.render_as_string(hide_password=False)
    return parsed.render_as_string(hide_password=True)


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
