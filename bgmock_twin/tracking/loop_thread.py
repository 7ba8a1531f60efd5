"""One asyncio event loop on a thread of its own (uvloop where it is installed).

The sender runs every payment on it: pacing timers, thousands of concurrent POSTs on
one pooled client, Kafka delivery reports. The rest of the twin is threads, so this
is the bridge: ``call_soon`` from any thread (kept until the loop runs, when called
before ``start``), ``run`` a coroutine from another thread and wait for its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bgmock_twin.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (a third of asyncio's own CPU per request
    here), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._early: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._thread: threading.Thread | None = None
        self._ended = False

    def start(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``main()`` on a new loop on a daemon thread until it returns; the loop
        takes calls once this returns."""
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(main, ready),
                                        name=self.name, daemon=True)
        self._thread.start()
        ready.wait(10.0)  # set at once, unless the thread failed to make its loop

    def _run(self, main: Callable[[], Coroutine[Any, Any, None]],
             ready: threading.Event) -> None:
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        with self._lock:
            self._loop = loop
            early, self._early = self._early, []
        ready.set()
        for fn, args in early:
            loop.call_soon(fn, *args)
        try:
            loop.run_until_complete(main())
        except Exception:
            log.exception("event_loop_failed", loop=self.name)
        finally:
            with self._lock:
                self._loop = None
                self._ended = True
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def call_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """``fn(*args)`` on the loop, from any thread (dropped once the loop ended)."""
        with self._lock:
            if self._loop is None:
                if not self._ended:
                    self._early.append((fn, args))
                return
            self._loop.call_soon_threadsafe(fn, *args)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (from another thread)."""
        with self._lock:
            loop = self._loop
        if loop is None:
            coroutine.close()
            raise RuntimeError(f"the {self.name} loop is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    @property
    def on_loop(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
