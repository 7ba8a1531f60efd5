"""Kafka listeners of the emulated services: one thread per consumer.

Like a Spring ``@KafkaListener`` with manual acknowledgement: poll, hand every
record to the service's handler, commit the batch. A bank listener keeps only
records keyed with its own clearing number (a null key is dropped). A record
that is not a valid event is counted and skipped; a handler failing on the
database is retried a few times, then skipped with an error log, so one poison
record never blocks the partition. While the service's consumers are paused by
a fault, nothing is polled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from bgmock_twin import metrics
from bgmock_twin.bus.base import BusError, EventConsumer, Record
from bgmock_twin.contract import Event, InvalidEvent, decode_event
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

POLL_TIMEOUT_SECONDS = 0.2
HANDLER_ATTEMPTS = 3

EventHandler = Callable[[Event], str]


class Listener:
    """Consumes some topics for one service and dispatches each record by topic."""

    def __init__(
        self,
        service: str,
        consumer: EventConsumer,
        handlers: dict[str, EventHandler],
        *,
        own_key: str | None = None,
        paused: Callable[[], bool] = lambda: False,
        unavailable: Callable[[], bool] = lambda: False,
    ) -> None:
        self.service = service
        self.consumer = consumer
        self._handlers = handlers
        self._own_key = own_key.encode() if own_key is not None else None
        self._paused = paused
        self._unavailable = unavailable
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failing = False
        self._thread = threading.Thread(
            target=self._run, name=f"emulator-listener-{service}-{'+'.join(handlers)}",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def signal_stop(self) -> None:
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        try:
            self.consumer.close()
        except Exception:  # closing must not stop the rest of the shutdown
            log.debug("emulator_consumer_close_failed", service=self.service)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._paused():
                self._stop.wait(0.05)
                continue
            try:
                if self._unavailable():
                    raise BusError("bus down (fault injected)")
                records = self.consumer.poll(POLL_TIMEOUT_SECONDS)
                if not self._ready.is_set() and self.consumer.assignment_ready():
                    self._ready.set()
                if not records:
                    continue
                self._handle_batch(records)
                if self._unavailable():
                    raise BusError("bus down (fault injected)")
                self.consumer.commit(records)
                if self._failing:
                    self._failing = False
                    log.info("emulator_consumer_recovered", service=self.service)
            except BusError as exc:
                if not self._failing:
                    self._failing = True
                    log.warning("emulator_consumer_failed", service=self.service, error=str(exc))
                self._stop.wait(0.5)
            except Exception:  # the listener thread must survive anything
                log.exception("emulator_listener_unexpected_error", service=self.service)
                self._stop.wait(0.5)

    def _handle_batch(self, records: Sequence[Record]) -> None:
        for record in records:
            # A pause that arrives mid-poll holds the records already fetched: nothing
            # is handled while paused.
            while self._paused() and not self._stop.is_set():
                self._stop.wait(0.05)
            if self._stop.is_set():
                return
            result = self._handle(record)
            metrics.EMULATOR_EVENTS.labels(service=self.service, topic=record.topic,
                                           result=result).inc()

    def _handle(self, record: Record) -> str:
        if self._own_key is not None:
            if record.key is None:
                return "null_key"
            if record.key != self._own_key:
                return "foreign_key"
        handler = self._handlers.get(record.topic)
        if handler is None:
            return "invalid"
        try:
            event = decode_event(record.topic, record.value)
        except InvalidEvent as exc:
            log.warning("emulator_invalid_event", service=self.service, topic=record.topic,
                        reason=exc.reason, partition=record.partition, offset=record.offset)
            return "invalid"
        for attempt in range(1, HANDLER_ATTEMPTS + 1):
            try:
                return handler(event)
            except SQLAlchemyError as exc:
                if attempt == HANDLER_ATTEMPTS:
                    log.error("emulator_event_failed", service=self.service, topic=record.topic,
                              partition=record.partition, offset=record.offset, error=str(exc))
                    return "error"
                time.sleep(0.05 * attempt)
            except ValueError as exc:
                log.warning("emulator_event_rejected", service=self.service, topic=record.topic,
                            error=str(exc))
                return "invalid"
        return "error"
