"""The one worker-thread base: start/stop, back-off growth and reset, a step that
raises never ends the thread, and a stop during a back-off returns promptly."""

from __future__ import annotations

import threading
import time

import pytest

from bgmock_twin.workers import Backoff, Worker


class Steps(Worker):
    """A worker whose steps follow a script: ``"ok"`` or ``"fail"``, then idle."""

    def __init__(self, script: list[str], backoff: Backoff | None = None) -> None:
        super().__init__("test-worker", backoff=backoff, error_event="test_worker_error")
        self.script = list(script)
        self.ran: list[str] = []
        self.waits: list[float] = []
        self.errors_seen: list[Exception] = []
        self.stopped_on: str | None = None
        self.idle = threading.Event()

    def step(self) -> None:
        if not self.script:
            self.idle.set()
            self.wait(0.01)
            return
        what = self.script.pop(0)
        self.ran.append(what)
        if self.backoff is not None:
            self.waits.append(self.backoff.current)
        if what == "fail":
            raise RuntimeError("scripted failure")

    def on_error(self, exc: Exception) -> None:
        self.errors_seen.append(exc)

    def on_stop(self) -> None:
        self.stopped_on = threading.current_thread().name


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.2, 1.0)
    assert [backoff.next() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.2
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_start_and_stop_run_on_a_named_daemon_thread() -> None:
    worker = Steps(["ok"])
    assert not worker.alive
    worker.start()
    assert worker.alive
    names = {t.name: t.daemon for t in threading.enumerate()}
    assert names.get("test-worker") is True
    assert worker.idle.wait(5)
    worker.stop(timeout=2)
    assert not worker.alive
    assert worker.stopped_on == "test-worker"
    assert worker.ran == ["ok"]
    worker.start()  # a stopped worker starts again
    assert worker.alive
    worker.stop(timeout=2)
    assert not worker.alive


def test_a_failing_step_never_ends_the_thread_and_is_counted() -> None:
    worker = Steps(["fail", "fail", "ok", "fail", "ok"], backoff=Backoff(0.01, 0.02))
    worker.start()
    try:
        assert worker.idle.wait(5)
        assert worker.alive
    finally:
        worker.stop(timeout=2)
    assert worker.ran == ["fail", "fail", "ok", "fail", "ok"]
    assert worker.errors == 3 and worker.consecutive_errors == 0
    assert all(isinstance(exc, RuntimeError) for exc in worker.errors_seen)
    # the back-off grows while steps fail and starts over after a good step
    assert worker.waits == [0.01, 0.02, 0.02, 0.01, 0.02]


def test_default_error_handler_logs_and_the_loop_goes_on() -> None:
    class Raising(Worker):
        def __init__(self) -> None:
            super().__init__("raising-worker", error_event="raising_worker_error")
            self.calls = 0

        def step(self) -> None:
            self.calls += 1
            if self.calls < 3:
                raise ValueError("boom")
            self.wait(0.01)

    worker = Raising()
    worker.start()
    try:
        deadline = time.monotonic() + 5
        while worker.calls < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop(timeout=2)
    assert worker.calls >= 4 and worker.errors == 2


def test_stop_during_backoff_returns_promptly() -> None:
    worker = Steps(["fail"], backoff=Backoff(30.0, 60.0))
    worker.start()
    deadline = time.monotonic() + 5
    while worker.errors == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.errors == 1  # now waiting 30 s before the next step
    began = time.monotonic()
    worker.stop(timeout=5)
    assert time.monotonic() - began < 1.0
    assert not worker.alive and worker.stopped_on == "test-worker"


def test_wake_interrupts_a_step_blocked_elsewhere() -> None:
    class Blocked(Worker):
        def __init__(self) -> None:
            super().__init__("blocked-worker")
            self.cond = threading.Condition()

        def step(self) -> None:
            with self.cond:
                self.cond.wait(30)

        def wake(self) -> None:
            with self.cond:
                self.cond.notify_all()

    worker = Blocked()
    worker.start()
    time.sleep(0.05)
    began = time.monotonic()
    worker.stop(timeout=5)
    assert time.monotonic() - began < 1.0
    assert not worker.alive
