"""An in-process broker with Kafka's semantics, for embedded mode without Kafka.

It keeps what the twin and the emulator rely on from Kafka: topics with 3
partitions chosen like the Java client does (``murmur2(key) % partitions``, so a
key lands in the same partition as on a real cluster; a null key goes round
robin), append-only logs with offsets, headers and timestamps, consumer groups
whose members share the partitions and resume from committed offsets (a group
starting a partition at its end commits that start at once, as the Kafka consumer
does), and
manual assignment of every partition without joining the group. A fault switch
(``set_available``) makes every operation fail like an unreachable broker.

One condition variable guards all state: operations are short (list appends and
slices) and ``poll`` sleeps on it instead of spinning.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bgmock_twin.bus.base import BusError, Delivery, Record

DEFAULT_PARTITIONS = 3
# Retention by count (Kafka retains by time; an in-process log must bound memory):
# about 100 s of backlog per partition at 500 payments/s, ~200 MB at the very worst.
DEFAULT_MAX_RECORDS_PER_PARTITION = 50_000


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (the Java default partitioner's hash), unsigned."""
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    index = length & ~3
    extra = length % 4
    if extra == 3:
        h ^= data[index + 2] << 16
    if extra >= 2:
        h ^= data[index + 1] << 8
    if extra >= 1:
        h ^= data[index]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition the Java default partitioner picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass
class _Partition:
    records: list[Record] = field(default_factory=list)
    base_offset: int = 0  # offset of records[0]; grows when retention trims the log

    @property
    def end_offset(self) -> int:
        return self.base_offset + len(self.records)


@dataclass
class _Group:
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    members: list[_MemoryConsumer] = field(default_factory=list)
    generation: int = 0


class InMemoryBus:
    """A thread-safe in-process broker implementing ``EventBus``."""

    name = "memory"
    poll_seconds = 0.5

    def __init__(
        self,
        partitions: int = DEFAULT_PARTITIONS,
        max_records_per_partition: int = DEFAULT_MAX_RECORDS_PER_PARTITION,
    ) -> None:
        self._cond = threading.Condition()
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._partitions = partitions
        self._max_records = max_records_per_partition
        self._round_robin = itertools.count()
        self._available = True
        self._closed = False

    # --- fault switch ---------------------------------------------------------------
    def set_available(self, available: bool) -> None:
        """``False`` makes produce, flush, poll, commit and check raise ``BusError``."""
        with self._cond:
            self._available = available
            self._cond.notify_all()

    @property
    def available(self) -> bool:
        return self._available

    def _check(self) -> None:
        if self._closed:
            raise BusError("in-memory bus is closed")
        if not self._available:
            raise BusError("in-memory bus is unavailable (fault injected)")

    # --- EventBus -------------------------------------------------------------------
    def producer(self) -> _MemoryProducer:
        return _MemoryProducer(self)

    def consumer(
        self,
        group_id: str,
        topics: Sequence[str],
        *,
        from_beginning_if_new: bool = True,
        manual_assign: bool = False,
    ) -> _MemoryConsumer:
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        with self._cond:
            for topic in topics:
                self._topic(topic)
            return _MemoryConsumer(self, group_id, tuple(topics), from_beginning_if_new,
                                   manual_assign)

    def ensure_topics(self, topics: Sequence[str], partitions: int = DEFAULT_PARTITIONS) -> None:
        with self._cond:
            for topic in topics:
                self._topic(topic, partitions)

    def check(self, timeout: float) -> None:
        with self._cond:
            self._check()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- monitoring -----------------------------------------------------------------
    def committed(self, group_id: str, topic: str) -> dict[int, int]:
        """Committed offsets of a group for a topic, by partition (only those committed)."""
        with self._cond:
            group = self._groups.get(group_id)
            if group is None:
                return {}
            return {p: o for (t, p), o in group.committed.items() if t == topic}

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset of every partition of a topic (empty if it does not exist)."""
        with self._cond:
            parts = self._topics.get(topic, [])
            return {i: part.end_offset for i, part in enumerate(parts)}

    def topics(self) -> list[str]:
        with self._cond:
            return sorted(self._topics)

    def groups(self) -> list[str]:
        with self._cond:
            return sorted(self._groups)

    # --- internals (caller holds the condition) -------------------------------------
    def _topic(self, topic: str, partitions: int | None = None) -> list[_Partition]:
        parts = self._topics.get(topic)
        if parts is None:
            # Like a broker with auto.create.topics.enable: first use creates it.
            parts = [_Partition() for _ in range(partitions or self._partitions)]
            self._topics[topic] = parts
            for group in self._groups.values():
                if group.members:
                    group.generation += 1
        return parts

    def _group(self, group_id: str) -> _Group:
        group = self._groups.get(group_id)
        if group is None:
            group = _Group()
            self._groups[group_id] = group
        return group

    def _append(
        self, topic: str, key: str | None, value: bytes, headers: Mapping[str, bytes] | None
    ) -> None:
        with self._cond:
            self._check()
            parts = self._topic(topic)
            key_bytes = key.encode() if key is not None else None
            if key_bytes is None:
                index = next(self._round_robin) % len(parts)
            else:
                index = partition_for_key(key_bytes, len(parts))
            part = parts[index]
            part.records.append(Record(
                topic=topic,
                partition=index,
                offset=part.end_offset,
                key=key_bytes,
                value=value,
                headers=tuple((k, bytes(v)) for k, v in (headers or {}).items()),
                timestamp_ms=int(time.time() * 1000),
            ))
            if len(part.records) > self._max_records + self._max_records // 10:
                drop = len(part.records) - self._max_records
                del part.records[:drop]
                part.base_offset += drop
            self._cond.notify_all()


class _MemoryProducer:
    def __init__(self, bus: InMemoryBus) -> None:
        self._bus = bus

    def produce(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        on_delivery: Delivery | None = None,
    ) -> None:
        self._bus._append(topic, key, value, headers)
        if on_delivery is not None:  # stored at once: delivered
            on_delivery(None)

    def poll(self, timeout: float) -> None:
        return None

    def flush(self, timeout: float) -> None:
        with self._bus._cond:
            self._bus._check()

    def close(self) -> None:
        return None


class _MemoryConsumer:
    def __init__(
        self,
        bus: InMemoryBus,
        group_id: str,
        topics: tuple[str, ...],
        from_beginning_if_new: bool,
        manual_assign: bool,
    ) -> None:
        self._bus = bus
        self._group_id = group_id
        self._topics = topics
        self._from_beginning = from_beginning_if_new
        self._manual = manual_assign
        self._positions: dict[tuple[str, int], int] = {}
        self._assignment: list[tuple[str, int]] = []
        self._generation = -1
        self._next_start = 0
        self._closed = False
        self._woken = False
        group = bus._group(group_id)
        if not manual_assign:
            group.members.append(self)
            group.generation += 1
        self._refresh_assignment()

    @property
    def group_id(self) -> str:
        return self._group_id

    def assignment(self) -> list[tuple[str, int]]:
        with self._bus._cond:
            return list(self._assignment)

    def assignment_ready(self) -> bool:
        return not self._closed

    def poll(self, timeout: float, max_records: int = 500) -> list[Record]:
        deadline = time.monotonic() + max(0.0, timeout)
        bus = self._bus
        with bus._cond:
            while True:
                if self._closed:
                    raise BusError("consumer is closed")
                bus._check()
                self._refresh_assignment()
                records = self._collect(max_records)
                if records:
                    return records
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._woken:
                    self._woken = False
                    return []
                bus._cond.wait(remaining)

    def wakeup(self) -> None:
        with self._bus._cond:
            self._woken = True
            self._bus._cond.notify_all()

    def commit(self, records: Sequence[Record]) -> None:
        if not records:
            return
        offsets: dict[tuple[str, int], int] = {}
        for record in records:
            tp = (record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
        with self._bus._cond:
            if self._closed:
                raise BusError("consumer is closed")
            self._bus._check()
            self._bus._group(self._group_id).committed.update(offsets)

    def close(self) -> None:
        with self._bus._cond:
            if self._closed:
                return
            self._closed = True
            group = self._bus._group(self._group_id)
            if self in group.members:
                group.members.remove(self)
                group.generation += 1
            self._bus._cond.notify_all()

    # --- internals (caller holds the condition) -------------------------------------
    def _refresh_assignment(self) -> None:
        group = self._bus._group(self._group_id)
        if self._generation == group.generation:
            return
        wanted: list[tuple[str, int]] = []
        for topic in self._topics:
            count = len(self._bus._topic(topic))
            if self._manual:
                wanted.extend((topic, p) for p in range(count))
                continue
            # Range-like assignment among the members subscribed to this topic.
            members = [m for m in group.members if topic in m._topics]
            index = members.index(self)
            wanted.extend((topic, p) for p in range(count) if p % len(members) == index)
        kept = set(wanted)
        for tp in list(self._positions):
            if tp not in kept:
                del self._positions[tp]
        for tp in wanted:
            if tp not in self._positions:
                self._positions[tp] = self._start_offset(group, tp)
        self._assignment = wanted
        self._generation = group.generation

    def _start_offset(self, group: _Group, tp: tuple[str, int]) -> int:
        part = self._bus._topic(tp[0])[tp[1]]
        committed = group.committed.get(tp)
        if committed is not None:
            return max(committed, part.base_offset)
        if self._from_beginning:
            return part.base_offset
        # "latest" is committed at once: a restart resumes here, not at a later end
        group.committed[tp] = part.end_offset
        return part.end_offset

    def _collect(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        count = len(self._assignment)
        if count == 0:
            return out
        start = self._next_start % count
        self._next_start += 1
        for i in range(count):
            if len(out) >= max_records:
                break
            tp = self._assignment[(start + i) % count]
            part = self._bus._topic(tp[0])[tp[1]]
            position = max(self._positions[tp], part.base_offset)
            if position >= part.end_offset:
                continue
            begin = position - part.base_offset
            chunk = part.records[begin:begin + max_records - len(out)]
            out.extend(chunk)
            self._positions[tp] = position + len(chunk)
        return out
