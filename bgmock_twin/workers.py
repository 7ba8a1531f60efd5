"""One background thread shape for every loop the twin runs.

The Kafka follower, the sender's pacer, the status-poller threads, the ledger
writer, the emulator's outbox publishers and Kafka listeners are each "a named
daemon thread that repeats one step until asked to stop, and never dies of an
exception". ``Worker`` writes that once: start, stop with a join timeout, the stop
event, exponential back-off with a cap after a failed step, error counting and
logging, ``alive``.

A loop becomes a worker by subclassing and overriding hooks:

- ``step()``: one round of work; it may block, but should wake up within a
  moment when ``stopping`` (use ``self.wait(seconds)``, or override ``wake``);
- ``on_error(exc)``: called on the thread, inside the ``except`` block, after a
  step raised (the default logs ``error_event`` at error level); the worker then
  waits the back-off (if it has one) and goes on;
- ``wake()``: called by ``signal_stop`` to interrupt a step blocked on something
  other than the stop event (a condition variable, say);
- ``on_stop()``: runs once on the thread after the loop ends (final flush, close).

The ledger writer (``tracking/ledger/store.py``) shows all four hooks at work: a
step that puts a failed batch back and re-raises, an ``on_error`` that warns once
per outage, a ``wake`` that notifies its condition, and an ``on_stop`` that drains
what is still buffered.

``tune_gc`` sets the garbage collector's thresholds for a process that runs these
loops at thousands of items a second (the daemon calls it at start-up);
``release_freed_memory`` hands memory freed after a one-off burst (a restart's
resume) back to the system.
"""

from __future__ import annotations

import ctypes
import gc
import threading

from bgmock_twin.logs import get_logger

log = get_logger(__name__)

DEFAULT_JOIN_TIMEOUT = 5.0
# The Kafka follower makes several container objects per event (a record, an event,
# its entry, a step mark, ledger rows), nearly all freed by reference counting. With
# CPython's default first threshold (700) a young collection ran every few dozen
# events and, through the older generations, kept scanning the payments followed:
# about a fifth of the follower's CPU at 200k events (measured), growing with them.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Collect cyclic garbage less often (``GC_THRESHOLDS``): the twin makes little."""
    gc.set_threshold(*GC_THRESHOLDS)


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; a
    no-op elsewhere). glibc keeps what a burst of small objects freed: after a
    resume of 100k payments in flight, 270 MiB of a 720 MiB RSS was such free heap
    (measured). Takes a few milliseconds; for one-off bursts, not hot paths."""
    try:
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own libc
    except OSError:  # no symbols of the process to load: nothing to give back this way
        return
    if trim is not None:
        trim(0)


class Backoff:
    """Exponential back-off: ``initial`` seconds, doubling up to ``cap``."""

    def __init__(self, initial: float, cap: float, factor: float = 2.0) -> None:
        if initial <= 0 or cap < initial or factor < 1:
            raise ValueError("back-off needs 0 < initial <= cap and factor >= 1")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self._current = initial

    @property
    def current(self) -> float:
        """The delay the next ``next()`` returns."""
        return self._current

    def next(self) -> float:
        """The delay to wait now; the following one grows (up to the cap)."""
        delay = self._current
        self._current = min(self._current * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self._current = self.initial


class Worker:
    """A named daemon thread repeating ``step()`` until stopped (see the module)."""

    def __init__(
        self,
        name: str,
        *,
        backoff: Backoff | None = None,
        error_event: str = "worker_error",
        join_timeout: float = DEFAULT_JOIN_TIMEOUT,
    ) -> None:
        self.name = name
        self.backoff = backoff
        self.error_event = error_event
        self.join_timeout = join_timeout
        self.errors = 0  # failed steps since start
        self.consecutive_errors = 0  # failed steps since the last good one
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the hooks ---------------------------------------------------------------------------
    def step(self) -> None:
        raise NotImplementedError

    def on_error(self, exc: Exception) -> None:
        log.error(self.error_event, error=repr(exc))

    def wake(self) -> None:
        """Interrupt a blocked step (nothing to do when it only waits on ``wait``)."""

    def on_stop(self) -> None:
        """Last words on the worker's own thread, after the loop."""

    # --- control -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread (a no-op while one is running)."""
        if self._thread is None:
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def signal_stop(self) -> None:
        """Ask the loop to end without waiting for it."""
        self._stop_event.set()
        self.wake()

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` (default ``join_timeout``) for the thread to end."""
        thread = self._thread
        if thread is not None:
            thread.join(self.join_timeout if timeout is None else timeout)
            self._thread = None

    def stop(self, timeout: float | None = None) -> None:
        """Signal the stop and wait up to ``timeout`` for the thread to end."""
        self.signal_stop()
        self.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, returning early (True) when the stop is signalled."""
        return self._stop_event.wait(seconds)

    # --- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop_event.is_set():
                if not self._step_once() and self.backoff is not None \
                        and self.wait(self.backoff.next()):
                    break
        finally:
            try:
                self.on_stop()
            except Exception:  # the last words must not hide the loop's end
                log.exception("worker_stop_failed", worker=self.name)

    def _step_once(self) -> bool:
        """One step; False when it raised (counted and logged, never fatal)."""
        try:
            self.step()
        except Exception as exc:
            self.errors += 1
            self.consecutive_errors += 1
            try:
                self.on_error(exc)
            except Exception:
                log.exception("worker_error_handler_failed", worker=self.name)
            return False
        self.consecutive_errors = 0
        if self.backoff is not None:
            self.backoff.reset()
        return True
