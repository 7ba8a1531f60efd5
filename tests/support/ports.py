"""Free loopback ports and readiness polling (tests never sleep on a guess).

A port is handed out before the process that listens on it starts, so nothing may
take it in between. The kernel's own pick (bind to port 0) is random per call: two
calls may return the same port, and any outgoing connection may take it as its
ephemeral source port. So ``free_port`` hands out ports below the kernel's
ephemeral range, from a slice of its own per pytest-xdist worker, and never the
same port twice in one process.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOWEST = 10_000  # above the well-known and most registered service ports


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _slice() -> range:
    """This worker's share of [LOWEST, the ephemeral range's start)."""
    top = max(_ephemeral_start(), LOWEST + 2_000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = (top - LOWEST) // workers
    low = LOWEST + (index % workers) * size
    return range(low, low + size)


_lock = threading.Lock()
_slice_ports = _slice()
# from a random point on: another test session on the machine walks elsewhere
_next = random.randrange(len(_slice_ports))
_given: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, not handed out before in this process."""
    global _next
    with _lock:
        for _ in range(2 * len(_slice_ports)):
            port = _slice_ports[_next % len(_slice_ports)]
            _next += 1
            if len(_given) >= len(_slice_ports):  # the whole slice given: start over
                _given.clear()
            if port in _given:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _given.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {_slice_ports}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(
    condition: Callable[[], T | bool | None],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value  # type: ignore[return-value]
        except Exception as exc:  # the condition may fail until the thing is ready
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {message}; last error: {last_error!r}")
