"""Event transport: one interface over Kafka and over an in-process broker.

The emulator publishes and consumes through it, and so does the twin's lifecycle
tracker, so embedded mode without Kafka behaves like a real broker: same topics,
3 partitions each, keys, JSON values, headers, consumer groups and committed offsets.
"""

from bgmock_twin.bus.base import (
    BusError,
    EventBus,
    EventConsumer,
    EventProducer,
    Record,
)

__all__ = ["BusError", "EventBus", "EventConsumer", "EventProducer", "Record"]
