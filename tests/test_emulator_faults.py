"""Fault injection in the emulator: HTTP faults, bus and consumer faults, books faults,
the admin API, the default outbox cadence and ``bgmock-twin emulate`` as a process."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from bgmock_twin.bus.memory import InMemoryBus
from bgmock_twin.contract import TOPIC_COMPLETED, TOPIC_FORWARDED, TOPIC_INITIATED
from bgmock_twin.contract.tables import bank_outbox_events
from bgmock_twin.emulator import EmbeddedBGMock, EmulatorConfig, FaultError
from tests.support.emulator_world import FAST_OUTBOX, Spy, World, emulator_world
from tests.support.ports import free_port, port_open, wait_for


@pytest.fixture
def world() -> Iterator[World]:
    """A fresh emulator per test: faults must not leak between tests."""
    with emulator_world(EmulatorConfig(
            host="127.0.0.1", bus=InMemoryBus(), outbox_interval_seconds=FAST_OUTBOX,
            admin_port=0)) as w:
        yield w


def _unpublished(world: World, service: str) -> int:
    table = bank_outbox_events
    with world.emulator.engines[service].connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)
                                .where(table.c.published.is_(False))).scalar_one())


def test_a_stop_ends_every_thread_without_waiting_out_their_polls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle emulator sleeps long in its accept loops and consumer polls; a stop
    (and ``down``) wakes them instead of waiting the sleep out."""
    from bgmock_twin.emulator import web

    monkeypatch.setattr(web, "ACCEPT_POLL_SECONDS", 120.0)
    bus = InMemoryBus()
    bus.poll_seconds = 120.0
    with emulator_world(EmulatorConfig(host="127.0.0.1", bus=bus,
                                       outbox_interval_seconds=FAST_OUTBOX)) as w:
        assert w.http.get(f"{w.a}/bank/health").text == "OK"
        w.emulator.faults.set_down("bank_b")
        assert not port_open(int(w.b.rsplit(":", 1)[1]))
        w.emulator.faults.set_down("bank_b", False)
        assert w.http.get(f"{w.b}/bank/health").text == "OK"
    left = [t.name for t in threading.enumerate()
            if t.name.startswith("emulator-") and t.is_alive()]
    assert left == []


# --- HTTP faults ------------------------------------------------------------------------------
def test_down_refuses_connections_and_up_rebinds_the_same_port(world: World) -> None:
    url = world.b
    port = int(url.rsplit(":", 1)[1])
    session = requests.Session()
    assert session.get(f"{url}/bank/health").text == "OK"  # a pooled keep-alive connection
    world.emulator.faults.set_down("bank_b")
    assert not port_open(port)
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/bank/health", timeout=2)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/bank/health", timeout=2)
    assert world.http.get(f"{world.a}/bank/health").text == "OK"  # the others are untouched
    world.emulator.faults.set_down("bank_b", False)
    assert world.emulator.urls["bank_b"] == url
    assert session.get(f"{url}/bank/health", timeout=2).text == "OK"
    session.close()


def test_hang_holds_requests_until_released(world: World) -> None:
    world.emulator.faults.set_hang("clearing")
    answers: list[int] = []

    def held() -> None:
        answers.append(requests.get(f"{world.c}/clearing/health", timeout=10).status_code)

    thread = threading.Thread(target=held)
    thread.start()
    try:
        with pytest.raises(requests.ReadTimeout):
            requests.get(f"{world.c}/clearing/health", timeout=0.3)
        assert answers == []
    finally:
        world.emulator.faults.set_hang("clearing", False)
    thread.join(timeout=5)
    assert answers == [200]  # answered once released
    assert world.http.get(f"{world.c}/clearing/health").text == "OK"


def test_latency_delays_every_answer(world: World) -> None:
    world.emulator.faults.set_latency("bank_a", 0.3)
    started = time.monotonic()
    assert world.http.get(f"{world.a}/bank/health").text == "OK"
    assert time.monotonic() - started >= 0.28
    world.emulator.faults.set_latency("bank_a", 0)
    assert world.http.get(f"{world.a}/bank/health").text == "OK"


def test_error_rate_answers_spring_500s(world: World) -> None:
    world.emulator.faults.set_error_rate("bank_a", 1.0)
    answer = world.http.get(f"{world.a}/bank/health")
    assert answer.status_code == 500
    assert set(answer.json()) == {"timestamp", "status", "error", "path"}
    # An error answer never touches the books.
    failed = world.http.post(f"{world.a}/bank/account", json={"accountNumber": "E1",
                                                              "balance": 1})
    assert failed.status_code == 500
    world.emulator.faults.set_error_rate("bank_a", 0.5)
    codes = {world.http.get(f"{world.a}/bank/health").status_code for _ in range(60)}
    assert codes == {200, 500}
    world.emulator.faults.set_error_rate("bank_a", 0)
    assert world.http.get(f"{world.a}/bank/account/E1").status_code == 404


def test_garbage_answers_200_with_a_body_that_is_not_json(world: World) -> None:
    world.emulator.faults.set_garbage("bank_b")
    answer = world.http.get(f"{world.b}/bank/account")
    assert answer.status_code == 200
    with pytest.raises(ValueError):
        answer.json()
    assert world.http.get(f"{world.b}/bank/health").text != "OK"
    world.emulator.faults.set_garbage("bank_b", False)
    assert world.http.get(f"{world.b}/bank/account").json() == []


# --- bus, consumers and outbox ---------------------------------------------------------------
def test_bus_down_keeps_rows_unpublished_until_it_is_back(world: World) -> None:
    payer = world.account("01", "100.00")
    bankgood = world.mapping("02", world.account("02", "0.00"))
    world.emulator.faults.set_bus_down()
    try:
        tx = world.pay("01", payer, bankgood, "10")  # REST still works
        time.sleep(6 * FAST_OUTBOX)
        assert _unpublished(world, "bank_a") == 1
        assert world.outgoing("01", tx)["status"] == "PENDING"  # type: ignore[index]
        assert world.balances("01", payer) == (Decimal("100.00"), Decimal("10.00"))
    finally:
        world.emulator.faults.set_bus_down(False)
    assert world.final("01", tx)["status"] == "SUCCESS"
    assert _unpublished(world, "bank_a") == 0
    assert len(world.spy.of(tx, TOPIC_INITIATED)) == 1


def test_paused_destination_consumers_stall_payments_at_forwarded(world: World) -> None:
    payer = world.account("01", "100.00")
    payee = world.account("02", "0.00")
    bankgood = world.mapping("02", payee)
    world.emulator.faults.pause_consumers("bank_b")
    try:
        tx = world.pay("01", payer, bankgood, "10")
        world.spy.wait(tx, TOPIC_FORWARDED)
        time.sleep(6 * FAST_OUTBOX)
        assert world.clearing_status(tx) == "PENDING"
        assert world.incoming("02", tx) is None
        assert world.outgoing("01", tx)["status"] == "PENDING"  # type: ignore[index]
        assert world.balances("01", payer) == (Decimal("100.00"), Decimal("10.00"))
    finally:
        world.emulator.faults.resume_consumers("bank_b")
    assert world.final("01", tx)["status"] == "SUCCESS"
    assert world.balances("02", payee) == (Decimal("10.00"), Decimal("0.00"))


def test_stalled_outbox_then_dropped_row_loses_the_payment(world: World) -> None:
    payer = world.account("01", "100.00")
    bankgood = world.mapping("02", world.account("02", "0.00"))
    faults = world.emulator.faults
    faults.stall_outbox("bank_a")
    try:
        tx = world.pay("01", payer, bankgood, "10")
        time.sleep(4 * FAST_OUTBOX)
        # State change and outbox row were committed together.
        assert _unpublished(world, "bank_a") == 1
        dropped = faults.drop_outbox_row("bank_a")
        assert dropped == {"transactionId": tx, "topic": TOPIC_INITIATED}
        assert faults.drop_outbox_row("bank_a") is None
    finally:
        faults.stall_outbox("bank_a", False)
    marker = world.pay("01", payer, bankgood, "1")
    assert world.final("01", marker)["status"] == "SUCCESS"
    assert world.spy.of(tx) == []
    assert world.outgoing("01", tx)["status"] == "PENDING"  # type: ignore[index]
    assert world.balances("01", payer) == (Decimal("99.00"), Decimal("10.00"))


def test_corrupt_balance_changes_the_books_without_any_event(world: World) -> None:
    number = world.account("02", "100.00")
    faults = world.emulator.faults
    assert faults.corrupt_balance("bank_b", number, Decimal("-7.25")) == Decimal("92.75")
    assert world.balances("02", number) == (Decimal("92.75"), Decimal("0.00"))
    with pytest.raises(KeyError):
        faults.corrupt_balance("bank_b", "NOPE", 1)
    with pytest.raises(FaultError):
        faults.corrupt_balance("clearing", number, 1)
    with pytest.raises(FaultError):
        faults.corrupt_balance("bank_b", number, "abc")


def test_fault_requests_are_validated(world: World) -> None:
    faults = world.emulator.faults
    for target, change in (("mars", {"down": True}), ("bank_a", {"down": "yes"}),
                           ("bank_a", {"latency_seconds": -1}), ("bank_a", {"error_rate": 2}),
                           ("bank_a", {"explode": True}), ("bus", {"paused": True}),
                           ("bank_a", {"latency_seconds": float("nan")})):
        with pytest.raises(FaultError):
            faults.apply(target, change)
    assert faults.snapshot()["services"]["bank_a"]["down"] is False
    state = faults.apply("bank_a", {"latency_seconds": 0.01, "error_rate": 0})
    assert state["latency_seconds"] == 0.01
    assert faults.apply("bus", {"down": False}) == {"down": False}


def test_memory_bus_down_is_the_broker_down_for_everyone(world: World) -> None:
    world.emulator.faults.apply("bus", {"down": True})
    with pytest.raises(Exception, match="unavailable"):
        world.bus.check(1)
    world.emulator.faults.apply("bus", {"down": False})
    world.bus.check(1)


# --- admin API -------------------------------------------------------------------------------
def test_admin_api_flips_faults_and_rejects_bad_input(world: World) -> None:
    admin = world.emulator.admin_url
    assert admin is not None
    overview = requests.get(f"{admin}/_emulator", timeout=5).json()
    assert overview["urls"] == world.emulator.urls and overview["bus"] == "memory"
    down = requests.post(f"{admin}/_emulator/faults", json={"service": "bank_b", "down": True},
                         timeout=5)
    assert down.status_code == 200 and down.json()["state"]["down"] is True
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{world.b}/bank/health", timeout=2)
    state = requests.get(f"{admin}/_emulator/faults", timeout=5).json()
    assert state["services"]["bank_b"]["down"] is True
    assert set(state["services"]["bank_b"]) == {"down", "hang", "latencySeconds", "errorRate",
                                                "garbage", "paused", "stallOutbox"}
    # camelCase switches, and the snake_case names of earlier versions still work
    for body in ({"service": "bank_a", "latencySeconds": 0.01, "errorRate": 0.5,
                  "stallOutbox": True},
                 {"service": "bank_a", "latency_seconds": 0.01, "error_rate": 0.5,
                  "stall_outbox": True}):
        answer = requests.post(f"{admin}/_emulator/faults", json=body, timeout=5)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"service": "bank_a", "state": {
            "down": False, "hang": False, "latencySeconds": 0.01, "errorRate": 0.5,
            "garbage": False, "paused": False, "stallOutbox": True}}
        assert world.emulator.faults.service("bank_a").error_rate == 0.5
        world.emulator.faults.reset()
    assert requests.post(f"{admin}/_emulator/faults/reset", timeout=5).status_code == 200
    assert world.http.get(f"{world.b}/bank/health").text == "OK"

    for bad in ('{"service": "mars", "down": true}', '{"service": "bank_a", "down": 3}',
                '{"service": "bank_a"}', '{"down": true}', "{broken", "[]",
                '{"service": "bank_a", "error_rate": 1.5}',
                '{"service": "bank_a", "errorRate": 1.5}',
                '{"service": "bank_a", "errorRate": 0, "error_rate": 0}'):
        answer = requests.post(f"{admin}/_emulator/faults", data=bad, timeout=5,
                               headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, bad
        assert "error" in answer.json() or "status" in answer.json()
    assert requests.get(f"{admin}/_emulator/nothing", timeout=5).status_code == 404
    bus = requests.post(f"{admin}/_emulator/faults", json={"service": "bus", "down": True},
                        timeout=5)
    assert bus.status_code == 200 and world.emulator.faults.bus_down
    requests.post(f"{admin}/_emulator/faults", json={"service": "bus", "down": False}, timeout=5)


def test_admin_api_books_faults(world: World) -> None:
    admin = world.emulator.admin_url
    number = world.account("01", "10.00")
    corrupt = requests.post(f"{admin}/_emulator/books/corrupt-balance", json={
        "service": "bank_a", "accountNumber": number, "delta": "2.50"}, timeout=5)
    assert corrupt.status_code == 200 and corrupt.json()["balance"] == 12.5
    assert corrupt.json()["service"] == "bank_a"
    # ``bank``, the name of earlier versions, is still accepted
    old = requests.post(f"{admin}/_emulator/books/corrupt-balance", json={
        "bank": "bank_a", "accountNumber": number, "delta": "-2.50"}, timeout=5)
    assert old.status_code == 200 and old.json()["balance"] == 10
    assert requests.post(f"{admin}/_emulator/books/corrupt-balance", json={
        "service": "bank_a", "accountNumber": "NOPE", "delta": 1}, timeout=5).status_code == 404
    for bad in ({"service": "bank_c", "accountNumber": number, "delta": 1},
                {"service": "bank_a", "accountNumber": number, "delta": True},
                {"service": "bank_a", "accountNumber": number, "delta": "x"},
                {"service": "bank_a", "accountNumber": number, "delta": 1, "extra": 1},
                {"service": "bank_a", "bank": "bank_a", "accountNumber": number, "delta": 1}):
        assert requests.post(f"{admin}/_emulator/books/corrupt-balance", json=bad,
                             timeout=5).status_code == 400, bad
    dropped = requests.post(f"{admin}/_emulator/books/drop-outbox-row",
                            json={"service": "clearing"}, timeout=5)
    assert dropped.status_code == 200 and dropped.json()["dropped"] is None
    assert requests.post(f"{admin}/_emulator/books/drop-outbox-row", json={"service": "x"},
                         timeout=5).status_code == 400


# --- cadence ---------------------------------------------------------------------------------
def test_default_outbox_cadence_is_about_one_second() -> None:
    bus = InMemoryBus()
    emulator = EmbeddedBGMock(EmulatorConfig(bus=bus))  # the default 1 s interval
    emulator.start()
    w = World(emulator, bus, Spy(bus))
    try:
        bankgood = w.mapping("02", w.account("02", "0.00"))
        ids = []
        started = time.monotonic()
        while time.monotonic() - started < 2.6:
            # a payer each: one payer's reserve raced the settlement of its payment
            # before (BGMock's optimistic lock, a 500), which is not this test's subject
            ids.append(w.pay("01", w.account("01", "1000.00"), bankgood, "1"))
            time.sleep(0.1)
        records = [r for tx in ids for r in w.spy.wait(tx, TOPIC_INITIATED, timeout=5)]
        stamps = sorted({r.timestamp_ms for r in records})
        batches: list[list[int]] = [[stamps[0]]]
        for stamp in stamps[1:]:
            if stamp - batches[-1][-1] > 200:
                batches.append([stamp])
            else:
                batches[-1].append(stamp)
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(batches)]
        print(f"{len(ids)} payments published in {len(batches)} batches, gaps {gaps} ms")
        assert len(batches) >= 2
        assert all(gap >= 500 for gap in gaps), gaps
        assert len(batches) < len(ids)  # rows wait for the next beat and go together
    finally:
        w.close()
        emulator.stop()
        bus.close()


# --- lifecycle -------------------------------------------------------------------------------
def test_stop_is_idempotent_and_releases_ports() -> None:
    bus = InMemoryBus()
    emulator = EmbeddedBGMock(EmulatorConfig(bus=bus, outbox_interval_seconds=FAST_OUTBOX,
                                             admin_port=0))
    emulator.start()
    ports = [int(url.rsplit(":", 1)[1]) for url in [*emulator.urls.values(),
                                                    emulator.admin_url or ""]]
    threads_before = {t.name for t in threading.enumerate() if t.name.startswith("emulator")}
    assert len(threads_before) >= 3 + 3 + 5  # http servers, publishers, listeners
    started = time.monotonic()
    emulator.stop()
    emulator.stop()
    assert time.monotonic() - started < 5
    assert not any(port_open(port) for port in ports)
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t.name.startswith("emulator") and t.is_alive()], timeout=5,
             message="emulator threads gone")
    bus.close()


def test_start_failure_cleans_up() -> None:
    with socket_on_port() as port:
        emulator = EmbeddedBGMock(EmulatorConfig(bus=InMemoryBus(), ports={"clearing": port}))
        with pytest.raises(OSError):
            emulator.start()
    assert not [t for t in threading.enumerate()
                if t.name.startswith("emulator") and t.is_alive()]


@contextlib.contextmanager
def socket_on_port() -> Iterator[int]:
    """A port somebody else is already listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_emulate_process_serves_fixed_ports_and_stops_on_sigterm(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("BANK_A", "BANK_B", "CLEARING", "ADMIN")}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TWIN_", "KAFKA_", "BANK_", "DB_", "CLEARING_"))}
    env.update({f"TWIN_EMULATOR_{name}_PORT": str(port) for name, port in ports.items()})
    env.update({"TWIN_LOG_FORMAT": "json", "TWIN_EMULATOR_OUTBOX_INTERVAL_SECONDS": "0.1"})
    code = "from bgmock_twin.emulator.standalone import run_standalone\n" \
           "from bgmock_twin.settings import load_settings\n" \
           "raise SystemExit(run_standalone(load_settings()))"
    log_path = tmp_path / "emulate.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        bank_a = f"http://127.0.0.1:{ports['BANK_A']}"
        wait_for(lambda: requests.get(f"{bank_a}/bank/health", timeout=1).text == "OK",
                 timeout=20, message="emulate process up")
        # the admin API starts just after the services: on a loaded machine, later
        wait_for(lambda: port_open(ports["ADMIN"]), timeout=20, message="admin API up")
        world_urls = requests.get(f"http://127.0.0.1:{ports['ADMIN']}/_emulator",
                                  timeout=5).json()["urls"]
        assert world_urls["clearing"] == f"http://127.0.0.1:{ports['CLEARING']}"
        number = f"P-{uuid.uuid4().hex[:6]}"
        assert requests.post(f"{bank_a}/bank/account", json={"accountNumber": number,
                                                             "balance": 5}, timeout=5
                             ).status_code == 201
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert not port_open(ports["BANK_A"])
        assert "emulator_stopped" in log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_completed_for_unknown_transaction_is_ignored_over_rest(world: World) -> None:
    unknown = str(uuid.uuid4())
    answer = world.http.post(f"{world.a}/bank/transaction/outgoing/completed", json={
        "transactionId": unknown, "status": "SUCCESS"})
    assert answer.status_code == 200 and answer.content == b""  # the door's empty 200
    assert world.spy.of(unknown, TOPIC_COMPLETED) == []
    assert world.outgoing("01", unknown) is None
