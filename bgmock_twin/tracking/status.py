"""The payments section of the twin's status, as ``Tracking.status`` answers it (a
typed value; the control API renders it in camelCase)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LedgerStatus:
    available: bool
    buffered: int  # rows waiting for the writer


@dataclass(frozen=True, slots=True)
class TrackingStatus:
    """The payments section of the twin's status."""

    in_flight: int
    stuck: dict[str, int]  # step waited for -> payments
    submitted: int
    outcomes: dict[str, int]  # counted outcome -> payments
    parked_events: int  # events that came before their payment's transaction id
    dropped: int
    sender_busy: int
    simulations_active: int
    provisioned: bool
    provision_error: str | None
    following: bool
    kafka_connected: bool
    ledger: LedgerStatus
    background_rate: float
    consumer_group: str
    following_by: str = "kafka"  # kafka or rest_polling (``rest_follower.Following``)
    not_observed: tuple[str, ...] = ()  # steps of a REST payment this twin cannot see
    channels: tuple[str, ...] = ("rest", "kafka")  # channels a payment can be sent on
    poll_requests: int = 0  # status GETs taken from the polling budget (REST polling)
    canary_by: str | None = None  # the replica of the fleet that sends the canary
