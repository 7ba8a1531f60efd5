"""``bgmock-twin emulate``: the emulator alone, on the seed's fixed ports.

Bank A on 30081, Bank B on 30082, the clearing on 30083 and the fault admin
API on 30090 by default (``TWIN_EMULATOR_*_PORT``), so the seed simulator and
the twin in external mode find it at their usual URLs. Events go over Kafka when
``KAFKA_BOOTSTRAP_SERVERS`` is set, else over the in-process bus. Runs until
SIGTERM or SIGINT, then stops cleanly and returns 0.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from bgmock_twin.bus.base import EventBus
from bgmock_twin.emulator.embedded import EmbeddedBGMock, EmulatorConfig
from bgmock_twin.logs import configure_logging, get_logger
from bgmock_twin.settings import Settings

log = get_logger(__name__)


def build_bus(settings: Settings) -> EventBus:
    if settings.kafka_bootstrap_servers:
        from bgmock_twin.bus.kafka import KafkaBus

        kafka: EventBus = KafkaBus(
            settings.kafka_bootstrap_servers,
            session_timeout_ms=settings.kafka_session_timeout_ms,
            client_id=f"bgmock-emulator-{settings.instance_id}",
            metrics_label="emulator",
        )
        return kafka
    from bgmock_twin.bus.memory import InMemoryBus

    memory: EventBus = InMemoryBus()
    return memory


def emulator_config(settings: Settings, bus: EventBus) -> EmulatorConfig:
    def secret(value: object) -> str | None:
        getter = getattr(value, "get_secret_value", None)
        return getter() if callable(getter) else None

    return EmulatorConfig(
        host=settings.emulator_host,
        bus=bus,
        db_urls={
            "bank_a": secret(settings.emulator_db_bank_a),
            "bank_b": secret(settings.emulator_db_bank_b),
            "clearing": secret(settings.emulator_db_switch),
        },
        outbox_interval_seconds=settings.emulator_outbox_interval_seconds,
        flush_window_seconds=settings.emulator_flush_window_seconds,
        admin_port=settings.emulator_admin_port,
        ports={
            "bank_a": settings.emulator_bank_a_port,
            "bank_b": settings.emulator_bank_b_port,
            "clearing": settings.emulator_clearing_port,
        },
    )


def run_standalone(settings: Settings) -> int:
    """Run the emulator until SIGTERM/SIGINT; 0 after a clean stop, 1 if it cannot start."""
    configure_logging(settings.log_level, settings.log_format.value)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("emulator_signal", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    bus: EventBus | None = None
    emulator: EmbeddedBGMock | None = None
    try:
        bus = build_bus(settings)
        emulator = EmbeddedBGMock(emulator_config(settings, bus))
        try:
            emulator.start()
        except Exception as exc:
            log.error("emulator_start_failed", error=str(exc))
            return 1
        log.info("emulator_ready", bus=bus.name, admin=emulator.admin_url, **emulator.urls)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        if emulator is not None:
            emulator.stop()
        if bus is not None:
            bus.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
