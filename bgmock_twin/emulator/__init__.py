"""An in-process emulator of BGMock: Bank A (01), Bank B (02) and the clearing service.

It speaks the contract of ``shared/bgmock-contract.md`` exactly (REST paths,
status codes, JSON shapes, Kafka topics, keys, headers, quirks) over real HTTP
ports and an event bus, keeps its books in the real table layout, and can be
broken on purpose through ``FaultController``. The daemon runs it in embedded
mode; ``bgmock-twin emulate`` runs it alone (``standalone.run_standalone``).
"""

from bgmock_twin.emulator.embedded import EmbeddedBGMock, EmulatorConfig
from bgmock_twin.emulator.faults import FaultController, FaultError

__all__ = ["EmbeddedBGMock", "EmulatorConfig", "FaultController", "FaultError"]
