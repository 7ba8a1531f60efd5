"""The control API's HTTP listener: uvicorn on a thread, with connections that cannot
hold the API hostage (issue 15, point 2).

What uvicorn (0.54, h11) offers and why it is not enough on its own:

- ``limit_concurrency`` counts *connections*, idle ones included, and answers 503 to
  every request beyond it, ``/healthz`` and ``/metrics`` too: 256 connections that
  send nothing blank the liveness probe and the scrape for as long as they stay;
- ``timeout_keep_alive`` closes a connection idle *after* a response, but a new
  connection that never sends a request, or sends one header line every 20 s
  (each byte cancels the keep-alive timer), is never closed;
- h11's ``max_incomplete_event_size`` bounds the header *size*, not the time.

So uvicorn's concurrency limit is off (requests in flight are bounded in
``api/limits.py``, probes exempt) and this protocol subclass adds what is missing:

- a read deadline: a request's headers must arrive within ``read_timeout`` of the
  connection (or of the previous response), and its body within ``read_timeout``
  of the headers; otherwise the connection is closed;
- a connection cap that never locks anybody out: beyond ``max_connections`` the
  oldest connection still waiting for its request is closed to admit the new one.
  A real client sends its request at once, so a flood of idle connections evicts
  itself, and a probe always gets in.

And one thing it does that an idle daemon should not: its main loop wakes ten times
a second, to refresh the ``Date`` header (once a second) and to look for a stop
request. ``QuietServer`` ticks once a second and is woken by its stop instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from bgmock_twin import metrics
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

KEEP_ALIVE_SECONDS = 5
TICK_SECONDS = 1.0  # the Date header's resolution
MAX_HEADER_BYTES = 16 * 1024
_RECEIVED = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


@dataclass(frozen=True)
class ConnectionLimits:
    read_timeout: float
    max_connections: int


class ConnectionGuard:
    """Shared by the connections of one server (all on its event loop)."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.waiting: OrderedDict[int, GuardedH11Protocol] = OrderedDict()

    def admit(self, newcomer: GuardedH11Protocol) -> bool:
        """Count ``newcomer`` in; over the cap, close the oldest waiting connection
        (False when none is waiting: then the newcomer is the one refused)."""
        self.open += 1
        if self.open <= self.limits.max_connections:
            return True
        if not self.waiting:
            return False
        _, oldest = self.waiting.popitem(last=False)
        metrics.API_CONNECTIONS_CLOSED.labels(reason="evicted").inc()
        oldest.close_idle()
        return True


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read deadline and a place in the guard."""

    guard: ConnectionGuard  # set on the subclass ``guarded_protocol`` makes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_body = False
        self._counted = False

    # --- the connection's life --------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._counted = True
        if not self.guard.admit(self):
            metrics.API_CONNECTIONS_CLOSED.labels(reason="evicted").inc()
            self.close_idle()
            return
        self._await_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        self.guard.waiting.pop(id(self), None)
        if self._counted:
            self._counted = False
            self.guard.open -= 1
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._follow_state()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_request()

    # --- the deadline -----------------------------------------------------------------------
    def _await_request(self) -> None:
        self._reading_body = False
        self.guard.waiting[id(self)] = self
        self._arm()

    def _follow_state(self) -> None:
        state = self.conn.their_state
        if state is h11.IDLE:
            return  # still waiting for the request line and headers
        self.guard.waiting.pop(id(self), None)
        if state is h11.SEND_BODY:
            if not self._reading_body:
                self._reading_body = True
                self._arm()  # the body gets its own read_timeout after the headers
        elif state in _RECEIVED:
            self._cancel_deadline()

    def _arm(self) -> None:
        self._cancel_deadline()
        self._deadline = self.loop.call_later(self.guard.limits.read_timeout, self._timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        metrics.API_CONNECTIONS_CLOSED.labels(reason="read_timeout").inc()
        log.debug("api_connection_read_timeout", body=self._reading_body,
                  client=self.client[0] if self.client else "unknown")
        self.close_idle()

    def close_idle(self) -> None:
        """Close without a word: the client has not finished sending a request."""
        self.guard.waiting.pop(id(self), None)
        self._cancel_deadline()
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class bound to one server's guard."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,),
                {"guard": ConnectionGuard(limits)})


class QuietServer(uvicorn.Server):
    """uvicorn's server with a main loop that ticks once a second (``on_tick``: the
    Date header, the exit checks) and wakes at once on ``request_exit``."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._exit = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        while not await self.on_tick(0):  # counter 0: the Date header each tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), TICK_SECONDS)

    def request_exit(self) -> None:
        """Stop (from any thread): in-flight requests finish, as on a signal."""
        self.should_exit = True
        loop, exit_event = self._loop, self._exit
        if loop is not None and exit_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: it ended
                loop.call_soon_threadsafe(exit_event.set)


class ApiServer:
    """Uvicorn on a background thread; ``stop()`` lets in-flight requests finish."""

    def __init__(self, app: FastAPI, host: str, port: int,
                 limits: ConnectionLimits | None = None) -> None:
        limits = limits or ConnectionLimits(read_timeout=10.0, max_connections=512)
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False,
            lifespan="off", timeout_graceful_shutdown=3, limit_concurrency=None,
            http=guarded_protocol(limits), timeout_keep_alive=KEEP_ALIVE_SECONDS,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES, backlog=1024,
        )
        self._server = QuietServer(config)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout / 0.02)):
            if self._server.started:
                return
            if not self._thread.is_alive():
                break
            deadline.wait(0.02)
        raise RuntimeError("control API did not start (is the port in use?)")

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self._server.config.port)

    def stop(self, timeout: float = 5.0) -> None:
        self._server.request_exit()
        self._thread.join(timeout)
