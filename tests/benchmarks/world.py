"""The system a sending benchmark runs against: ``bgmock-twin emulate`` in its own
process, on a Tansu broker (``bus="kafka"``, as in production: the twin follows
every payment through its events) or on the emulator's in-process bus
(``bus="memory"``: nothing to follow, quicker to start), plus the twin's sending
side in this process (``TwinHarness``)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bgmock_twin.bus.base import EventBus
from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.bus.memory import InMemoryBus
from tests.benchmarks.common import EmulatorProcess, process_cpu_seconds
from tests.benchmarks.twin import TwinHarness
from tests.support.broker import TansuBroker


@dataclass
class World:
    workdir: Path
    emulator: EmulatorProcess
    broker: TansuBroker | None
    twin: TwinHarness | None

    def others_cpu(self) -> dict[str, float]:
        """CPU seconds so far of the emulator and the broker processes."""
        cpu = {"emulator": process_cpu_seconds(self.emulator.pid)}
        if self.broker is not None and self.broker.process is not None:
            cpu["tansu"] = process_cpu_seconds(self.broker.process.pid)
        return cpu


@contextmanager
def world(bus: str, with_twin: bool = True) -> Iterator[World]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        broker: TansuBroker | None = None
        emulator: EmulatorProcess | None = None
        twin: TwinHarness | None = None
        try:
            twin_bus: EventBus
            if bus == "kafka":
                broker = TansuBroker(workdir)
                broker.start()
                emulator = EmulatorProcess(workdir, kafka=broker.bootstrap).start()
                twin_bus = KafkaBus(broker.bootstrap, session_timeout_ms=6000,
                                    client_id="bench-twin")
            else:
                emulator = EmulatorProcess(workdir).start()
                twin_bus = InMemoryBus()
            if with_twin:
                twin = TwinHarness(emulator.urls, workdir, twin_bus).start()
            yield World(workdir, emulator, broker, twin)
        finally:
            if twin is not None:
                twin.stop()
            if emulator is not None:
                emulator.stop()
            if broker is not None:
                broker.stop()
