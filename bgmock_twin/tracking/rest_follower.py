"""Following payments without Kafka: by polling the source bank over REST.

A team whose network policy keeps the twin away from BGMock's Kafka still needs
load and outcomes. Without a bus the twin sends payments over REST as always and
follows each one by asking the source bank (``GET /bank/transaction/outgoing/{id}``)
until its status is final or the payment is past its SLA; a FAILED payment is told
apart from a rejected one by asking the clearing (``GET /clearing/transaction/{id}``:
unknown there means the bank refused it). What it can see is timed on the twin's
own monotonic clock, as on the Kafka path: ``accepted`` (the 202) and ``settled``
(the poll that found the final status, so its time is as fine as the polling).
The four event steps (initiated, forwarded, processed, completed) cannot be seen:
they are marked *not observed*, never invented.

The polls are bounded three ways: a small pool of threads (the status poller's),
a per-payment back-off with jitter (``poller.follow_backoff``), and a global
``RequestBudget`` of GETs per second shared by every status check.

``Following`` names the two ways the twin follows payments; it is what
``/api/v1/status``, the start-up log line and ``bgmock_twin_info{following}`` show.
"""

from __future__ import annotations

from enum import StrEnum

from bgmock_twin.tracking.lifecycle import Channel, Step
from bgmock_twin.tracking.poller import Purpose, StatusPoller, follow_backoff
from bgmock_twin.tracking.tracker import StepReached, Tracker


class Following(StrEnum):
    """How the twin learns what happened to its payments (a bounded metric label)."""

    KAFKA = "kafka"  # the four topics, plus the source bank's final status
    REST_POLLING = "rest_polling"  # no Kafka: the source bank and clearing over REST


# What a twin without Kafka cannot see of a REST payment.
NOT_OBSERVED_WITHOUT_KAFKA = frozenset(
    {Step.INITIATED, Step.FORWARDED, Step.PROCESSED, Step.COMPLETED})

# Why the Kafka channel is refused without Kafka: the message a client gets.
KAFKA_CHANNEL_REFUSED = (
    "the kafka channel is unavailable: this twin runs without Kafka "
    "(KAFKA_BOOTSTRAP_SERVERS is not set) and follows payments by REST polling; "
    "use the rest channel")


def not_observed(following: Following, channel: Channel) -> frozenset[Step]:
    """The steps of a payment on ``channel`` that a twin following this way never sees."""
    if following is Following.REST_POLLING and channel is Channel.REST:
        return NOT_OBSERVED_WITHOUT_KAFKA
    return frozenset()


def channels(following: Following) -> tuple[Channel, ...]:
    """The channels a payment can be sent on."""
    return (Channel.REST,) if following is Following.REST_POLLING \
        else (Channel.REST, Channel.KAFKA)


class RestFollower:
    """Schedules the FOLLOW checks of every REST payment once its source bank
    accepted it (the tracker's ``StepReached``), and again after a restart."""

    def __init__(self, tracker: Tracker, poller: StatusPoller) -> None:
        self.tracker = tracker
        self.poller = poller

    def on_step(self, event: StepReached) -> None:
        """The tracker's subscriber (under its lock: only queues the first check)."""
        if event.step is Step.ACCEPTED and event.channel is Channel.REST \
                and not event.finished:
            self.poller.schedule(event.payment_id, Purpose.FOLLOW, follow_backoff(0))

    def resume(self) -> int:
        """Follow again the payments a previous run left in flight."""
        ids = self.tracker.awaiting_settlement()
        for payment_id in ids:
            self.poller.schedule(payment_id, Purpose.FOLLOW, follow_backoff(0))
        return len(ids)
