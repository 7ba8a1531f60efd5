"""The fleet slice: how replicas sharing one PostgreSQL ledger find each other
(``tracking.fleet``): the period of each replica's heartbeat (the renewal of its
``replica:<instance id>`` lease), how long a lease lives without renewal (after
that the others take over the replica's share and payments), and the lead time
of a simulation's common start."""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, Field, model_validator

from bgmock_twin.settings.fields import SLICE_CONFIG, env


class FleetMode(StrEnum):
    AUTO = "auto"
    OFF = "off"


class FleetSettings(BaseModel):
    model_config = SLICE_CONFIG

    fleet_mode: FleetMode = Field(
        FleetMode.AUTO, validation_alias=env("TWIN_FLEET"),
        description="`auto`: replicas on one PostgreSQL ledger run each simulation "
                    "together; `off`: each replica runs the simulations posted to it "
                    "alone. An SQLite ledger is one replica's own: always alone.",
    )
    fleet_heartbeat_seconds: float = Field(
        2.0, gt=0, le=60, validation_alias=env("TWIN_FLEET_HEARTBEAT_SECONDS"),
        description="How often a replica renews its lease in the ledger.",
    )
    fleet_lease_seconds: float = Field(
        10.0, gt=0, le=600, validation_alias=env("TWIN_FLEET_LEASE_SECONDS"),
        description="How long a replica counts as live after its last renewal; then "
                    "the others take over its share of running simulations and its "
                    "payments in flight.",
    )
    fleet_join_seconds: float = Field(
        1.0, ge=0, le=30, validation_alias=env("TWIN_FLEET_JOIN_SECONDS"),
        description="How far in the future a simulation's common start is set when "
                    "other replicas are live, so they can join it from the first payment.",
    )

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Self:
        if self.fleet_lease_seconds < 2 * self.fleet_heartbeat_seconds:
            raise ValueError("TWIN_FLEET_LEASE_SECONDS must be at least twice "
                             "TWIN_FLEET_HEARTBEAT_SECONDS (a late renewal is not a death)")
        return self
