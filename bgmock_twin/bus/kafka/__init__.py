"""The event transport over a real Kafka cluster (confluent-kafka / librdkafka).

Choices that matter for BGMock:
- the producer uses the Java client's partitioner (``murmur2_random``), so a key
  lands in the partition a Spring service would pick; ``acks=all``; ``flush``
  raises ``BusError`` if any message failed or is still outstanding, so an outbox
  row is only marked published once the broker has it;
- consumers never auto-commit: the caller commits ``offset + 1`` synchronously
  after handling, which gives at-least-once delivery;
- manual assignment (the twin's tracker) takes every partition and starts at the
  group's committed offset, or earliest/latest when the group has none;
- librdkafka's own log lines are demoted to DEBUG and its errors are counted in
  ``bgmock_kafka_client_errors_total``; a warning is logged only when a client's
  error state changes, so a broker outage does not flood the log.

After a broker outage nothing may be silently lost, also when the broker lost its
data (an in-memory broker restarted, a topic deleted and re-created):
- producers never auto-create topics (a monitor must not create BGMock's topics
  with the broker's default partition count); the topics a bus ensured are ensured
  again, with their partition count, before it produces after an outage;
- a manually assigned consumer checks its log after an outage and every few
  seconds: a topic whose id changed (re-created) is read again from the beginning,
  new partitions are picked up from their beginning, and offsets of records read
  from a log that is gone are never committed.

One module per concern: ``client`` (what every client shares: settings, error
state, librdkafka's log), ``admin`` (``KafkaBus``: topics, ids, liveness, the
factory), ``producer`` and ``consumer``.
"""

from bgmock_twin.bus.kafka.admin import KafkaBus
from bgmock_twin.bus.kafka.consumer import KafkaConsumer
from bgmock_twin.bus.kafka.producer import KafkaProducer

__all__ = ["KafkaBus", "KafkaConsumer", "KafkaProducer"]
