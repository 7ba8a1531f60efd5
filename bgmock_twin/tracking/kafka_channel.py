"""The sender's Kafka channel: a payment as an OutgoingTransactionEvent written straight
to ``transactions.initiated`` (key = source clearing number), bypassing the source
bank.

Each message carries its own delivery report (``bus.base.Delivery``), served by
``serve`` on the sender's loop: no flush per send (a flush per message collapsed the
channel near 400/s). A message that cannot even be queued is a refusal; one not
confirmed within the producer's message timeout may still have reached the broker,
so it stays in flight (its events or its step deadline tell).
"""

from __future__ import annotations

import functools
import threading

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError, EventBus, EventProducer
from bgmock_twin.contract import TOPIC_INITIATED, OutgoingTransactionEvent, Status, encode_event
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking.lifecycle import Payment
from bgmock_twin.tracking.refusals import refusal_of
from bgmock_twin.tracking.tracker import Tracker

log = get_logger(__name__)


class KafkaChannel:
    def __init__(self, bus: EventBus | None, tracker: Tracker) -> None:
        self.bus = bus
        self.tracker = tracker
        self._producer: EventProducer | None = None
        self._lock = threading.Lock()
        # messages queued whose delivery report has not been served yet (all on the
        # sender's loop: produced there, reported from ``serve`` or ``close``)
        self.awaiting_reports = 0

    def produce(self, payment: Payment, again: bool = False) -> None:
        """Queue the payment's event; ``again``: a resend after a restart (the first
        attempt may have gone out, so a failure to queue refuses nothing)."""
        assert payment.transaction_id is not None
        value, headers = encode_event(OutgoingTransactionEvent(
            transaction_id=payment.transaction_id,
            from_clearing_number=payment.from_clearing,
            from_account_number=payment.from_account,
            to_bankgood_number=payment.to_bankgood,
            amount=payment.amount,
            status=Status.PENDING,
        ))
        self.awaiting_reports += 1  # before: an in-memory bus reports within produce
        try:
            producer = self._get_producer()
            producer.produce(TOPIC_INITIATED, payment.from_clearing, value, headers,
                             on_delivery=functools.partial(self._delivered, payment.payment_id))
        except BusError as exc:  # not even queued: it can never reach the clearing
            self.awaiting_reports -= 1
            metrics.KAFKA_CLIENT_ERRORS.labels("sender", "produce").inc()
            if again:
                log.warning("kafka_payment_resend_failed", payment_id=payment.payment_id,
                            error=str(exc)[:200])
                return
            refused = refusal_of(exc)
            self.tracker.reject(payment.payment_id, refused.message, refused.ambiguous)

    def _get_producer(self) -> EventProducer:
        with self._lock:
            if self._producer is None:
                if self.bus is None:  # no Kafka: tracking refuses the channel before this
                    raise BusError("no Kafka configured (KAFKA_BOOTSTRAP_SERVERS unset)")
                self._producer = self.bus.producer()
            return self._producer

    def serve(self) -> None:
        """Serve the delivery reports that arrived (never waits)."""
        producer = self._producer
        if producer is not None:
            try:
                producer.poll(0)
            except BusError as exc:
                log.warning("kafka_delivery_poll_failed", error=str(exc)[:200])

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the reports still due, then close the producer."""
        with self._lock:
            if self._producer is not None:
                try:
                    self._producer.flush(timeout)
                    self._producer.close()
                except BusError as exc:
                    log.warning("producer_close_failed", error=str(exc)[:200])
                self._producer = None
                self.awaiting_reports = 0

    def _delivered(self, payment_id: str, failure: str | None) -> None:
        self.awaiting_reports -= 1
        _report(payment_id, failure)


def _report(payment_id: str, failure: str | None) -> None:
    """A Kafka payment's delivery report. Not delivered within the producer's
    message timeout, it may still have reached the broker: not rejected, it stays in
    flight, and its events or its step deadline tell."""
    if failure is None:
        return
    metrics.KAFKA_CLIENT_ERRORS.labels("sender", "unconfirmed").inc()
    log.warning("kafka_payment_unconfirmed", payment_id=payment_id, error=failure[:200])
