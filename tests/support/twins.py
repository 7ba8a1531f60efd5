"""In-process twins for tests, started, awaited and stopped one way everywhere.

- ``running_twin``: the whole daemon (``app.Twin``) in this process, yielded once
  it has provisioned its accounts (and, with ``following``, once its follower is
  positioned), stopped afterwards also when the test fails;
- ``await_tracking`` / ``stop_tracking``: the tracking part alone (no API server, no
  books), as the tests that run several twins around one shared emulator build it;
- ``memory_bgmock``: that shared emulator, on the in-process bus, with REST clients.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bgmock_twin.app import Twin
from bgmock_twin.books.service import Books
from bgmock_twin.bus.memory import InMemoryBus
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.emulator import EmbeddedBGMock, EmulatorConfig
from bgmock_twin.scheduler import JobScheduler
from bgmock_twin.settings import Settings
from bgmock_twin.tracking.service import Tracking
from tests.support.ports import wait_for


def is_provisioned(tracking: Tracking | None, following: bool = False) -> bool:
    """The twin has its accounts (and, with ``following``, sees the bus's events)."""
    return tracking is not None and (not following or tracking.following()) \
        and tracking.provisioner.fixtures is not None


@contextmanager
def running_twin(settings: Settings, *, following: bool = False, timeout: float = 30,
                 interval: float = 0.05) -> Iterator[Twin]:
    """The whole daemon in this process, ready to be used (see the module)."""
    daemon = Twin(settings)
    try:
        daemon.start()
        message = "twin provisioned and following" if following else "provisioned"
        wait_for(lambda: is_provisioned(daemon.tracking, following),
                 timeout=timeout, interval=interval, message=message)
        yield daemon
    finally:
        daemon.stop()


def books_of(twin: Twin) -> Books:
    assert isinstance(twin.books, Books)
    return twin.books


def api_url(twin: Twin) -> str:
    assert twin.api is not None
    return f"http://127.0.0.1:{twin.api.port}"


def await_tracking(tracking: Tracking, timeout: float = 10) -> Tracking:
    """Wait until a started tracking follows the bus and has provisioned its accounts."""
    wait_for(tracking.following, timeout=timeout, message="follower positioned")
    wait_for(lambda: tracking.status().provisioned, timeout=timeout, message="provisioned")
    return tracking


def stop_tracking(tracking: Tracking, scheduler: JobScheduler) -> None:
    tracking.stop(5)
    scheduler.shutdown(wait=False)


@dataclass
class MemoryBGMock:
    """The embedded emulator on the in-process bus, and REST clients to it."""

    bus: InMemoryBus
    emulator: EmbeddedBGMock
    clients: BGMockClients


@contextmanager
def memory_bgmock(outbox_interval: float, pool_size: int,
                  flush_window_seconds: float = 0.0) -> Iterator[MemoryBGMock]:
    """``flush_window_seconds``: BGMock's load-to-flush window, in which a payment's
    write on its payer loses a race with a settlement (its 500). 0 for tests that are
    not about that race, so their deliberate outcomes stay deterministic; the race
    has tests of its own (``test_emulator_optimistic_load``)."""
    bus = InMemoryBus()
    emulator = EmbeddedBGMock(EmulatorConfig(
        host="127.0.0.1", bus=bus, db_urls={"bank_a": None, "bank_b": None, "clearing": None},
        outbox_interval_seconds=outbox_interval, flush_window_seconds=flush_window_seconds,
    ))
    emulator.start()
    clients = BGMockClients.build(dict(emulator.urls), timeout=5, pool_size=pool_size)
    try:
        yield MemoryBGMock(bus, emulator, clients)
    finally:
        clients.close()
        emulator.stop()
        bus.close()
