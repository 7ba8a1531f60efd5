"""The slices of the event bus: which instance the twin is, and how it reaches Kafka."""

from __future__ import annotations

import socket

from pydantic import BaseModel, Field, field_validator

from bgmock_twin.settings.fields import SLICE_CONFIG, bootstrap_servers, env


class InstanceSettings(BaseModel):
    """The twin instance's name: in consumer groups, client ids and metrics."""

    model_config = SLICE_CONFIG

    instance_id: str = Field(
        default_factory=socket.gethostname, validation_alias=env("TWIN_INSTANCE_ID"),
        min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )


class BusSettings(InstanceSettings):
    """Kafka (the seed simulator's names), and the twin's own consumer group."""

    kafka_bootstrap_servers: str | None = Field(
        None, validation_alias=env("KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers (host:port[,host:port]). Unset in embedded "
        "mode means the emulator carries events over an in-process bus.",
    )
    kafka_group_id: str = Field(
        "digital-twin-simulator", validation_alias=env("KAFKA_GROUP_ID"), min_length=1,
        description="Base consumer group of the twin; the instance id is appended.",
    )
    kafka_session_timeout_ms: int = Field(
        10000, ge=1000, le=300000, validation_alias=env("TWIN_KAFKA_SESSION_TIMEOUT_MS")
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str | None) -> str | None:
        return bootstrap_servers(value)

    @property
    def consumer_group(self) -> str:
        """The twin's own consumer group: one per instance (KMinion style)."""
        return f"{self.kafka_group_id}.{self.instance_id}"
