"""Fault: the twin under attack and overload on its own API (issue 15, points 2 and 4).

A real ``bgmock-twin run`` (embedded mode, control token set); the attackers are
this test's own sockets and threads on loopback, bounded in count and time:

- hundreds of TCP connections that send nothing, and one that trickles a header line
  at a time, while ``/healthz``, ``/metrics`` and the control API must keep answering,
  and the twin closes the idle ones after its read timeout;
- unauthenticated mutations from four threads while the operator's authorised ones
  must never be answered 429;
- a reader flood that is limited per client (address and token), never the probes.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import requests

from tests.support.daemon import Daemon, running_daemon
from tests.support.ports import wait_for

TOKEN = "attack-token-0123456789"
READ_TIMEOUT = 2


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            sockets.append(sock)
        yield sockets


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the twin closed ``sock`` (EOF or reset) within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def answers(daemon: Daemon, path: str) -> int:
    return requests.get(daemon.url + path, timeout=5, headers=daemon.headers()).status_code


def test_idle_connections_never_blank_probes_metrics_or_the_api(tmp_path: Path) -> None:
    with running_daemon(tmp_path, TWIN_CONTROL_TOKEN=TOKEN, TWIN_LOAD_RATE="0",
                        TWIN_API_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT)) as daemon:
        with idle_connections(daemon.port, 270) as idle:
            trickler = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
            trickler.sendall(b"GET /api/v1/status HTTP/1.1\r\n")
            started = time.monotonic()
            # while they are all open: everything answers, and at once
            for path in ("/healthz", "/metrics", "/readyz", "/api/v1/status"):
                assert answers(daemon, path) == 200, path
            closed_trickle = False
            for _ in range(20):  # one header line a second: the deadline still holds
                try:
                    trickler.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed_trickle = True
                    break
                if closed_by_peer(trickler, 1.0):
                    closed_trickle = True
                    break
            assert closed_trickle, "the trickler was never closed"
            assert time.monotonic() - started < READ_TIMEOUT + 10
            # the idle ones were closed after the read timeout, every one of them
            assert all(closed_by_peer(sock, 15) for sock in idle)
            trickler.close()
        assert answers(daemon, "/api/v1/status") == 200
        assert (daemon.metric("bgmock_api_connections_closed_total", reason="read_timeout")
                or 0) >= 270


def test_connection_flood_beyond_the_cap_evicts_the_idle_not_the_probe(
        tmp_path: Path) -> None:
    with running_daemon(tmp_path, TWIN_CONTROL_TOKEN=TOKEN, TWIN_LOAD_RATE="0",
                        TWIN_API_MAX_CONNECTIONS="64", TWIN_API_READ_TIMEOUT_SECONDS="60"
                        ) as daemon:
        with idle_connections(daemon.port, 300):
            # the read timeout is far away: only eviction lets these in
            for _ in range(10):
                assert answers(daemon, "/healthz") == 200
                assert answers(daemon, "/metrics") == 200
                assert answers(daemon, "/api/v1/status") == 200
        assert (daemon.metric("bgmock_api_connections_closed_total", reason="evicted")
                or 0) >= 300 - 64


def _flood(daemon: Daemon, stop: threading.Event, codes: Counter[int]) -> None:
    session = requests.Session()
    for _ in range(2000):  # bounded even if ``stop`` never comes
        if stop.is_set():
            return
        response = session.post(daemon.url + "/api/v1/emulator/faults", json={"service": "x"},
                                timeout=10)
        codes[response.status_code] += 1


def test_unauthenticated_flood_never_spends_the_operators_budget(tmp_path: Path) -> None:
    with running_daemon(tmp_path, TWIN_CONTROL_TOKEN=TOKEN, TWIN_LOAD_RATE="0") as daemon:
        stop = threading.Event()
        flood: Counter[int] = Counter()
        threads = [threading.Thread(target=_flood, args=(daemon, stop, flood))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: flood[429] > 0, timeout=60, message="the flood meets its limit")
            operator: Counter[int] = Counter()
            for _ in range(20):
                operator[daemon.post("/api/v1/emulator/faults",
                                     json={"service": "nope"}).status_code] += 1
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert operator == Counter({422: 20}), operator
        assert set(flood) <= {401, 429}, flood


def _get(port: int, path: str, source: str, token: str | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                            source_address=(source, 0))
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_a_reader_flood_is_limited_per_client_never_the_probes(tmp_path: Path) -> None:
    with running_daemon(tmp_path, TWIN_CONTROL_TOKEN=TOKEN, TWIN_LOAD_RATE="0",
                        TWIN_API_READ_RATE_LIMIT="5") as daemon:
        flood = Counter(_get(daemon.port, "/api/v1/simulations", "127.0.0.2")
                        for _ in range(60))
        assert flood[429] > 0 and set(flood) <= {200, 429}, flood
        # the probes and the scrape, from the same flooded client, are never limited
        for path in ("/healthz", "/readyz", "/metrics"):
            assert all(_get(daemon.port, path, "127.0.0.2") == 200 for _ in range(30)), path
        # another address, and the operator behind the flooder's address, still read
        assert _get(daemon.port, "/api/v1/simulations", "127.0.0.3") == 200
        assert _get(daemon.port, "/api/v1/simulations", "127.0.0.2", TOKEN) == 200
        assert (daemon.metric("bgmock_api_rate_limited_total", kind="read",
                              client="anonymous") or 0) >= flood[429]
