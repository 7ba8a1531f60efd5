"""A real ``bgmock-twin run`` process: embedded start, health metrics, faults, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.broker import TansuBroker
from tests.support.daemon import daemon_env, running_daemon
from tests.support.ports import free_port, wait_for


def test_embedded_daemon_reports_services_and_sees_a_fault(tmp_path: Path) -> None:
    with running_daemon(tmp_path, ready=False, TWIN_LOAD_RATE="0") as daemon:
        started = time.monotonic()
        for service in ("bank_a", "bank_b", "clearing"):
            wait_for(lambda s=service: daemon.metric("bgmock_service_up", service=s) == 1.0,
                     timeout=15, message=f"{service} up")
        print(f"three embedded services up after {time.monotonic() - started:.2f}s")
        for service in ("kafka", "db_bank_a", "db_bank_b", "db_switch"):
            wait_for(lambda s=service: daemon.metric("bgmock_service_up", service=s) == 1.0,
                     timeout=5, message=f"{service} up")

        status = daemon.get("/api/v1/status").json()
        assert status["mode"] == "embedded"
        assert status["services"]["bank_a"]["up"] is True
        assert status["services"]["bank_a"]["lastCheck"]
        assert status["startedAt"] and "started_at" not in status

        answer = daemon.post("/api/v1/emulator/faults", {"service": "bank_b", "down": True})
        assert answer.status_code == 200, answer.text
        assert answer.json()["service"] == "bank_b"
        assert answer.json()["applied"]["down"] is True and "latencySeconds" in \
            answer.json()["applied"]
        stopped = time.monotonic()
        # one interval (1 s) plus the probe timeout (1 s), with scheduling slack
        wait_for(lambda: daemon.metric("bgmock_service_up", service="bank_b") == 0.0,
                 timeout=2 + 1.5, interval=0.05, message="bank_b down")
        print(f"bank_b seen down after {time.monotonic() - stopped:.2f}s")
        assert daemon.metric("bgmock_service_up", service="bank_a") == 1.0
        assert (daemon.metric("bgmock_probe_failures_total", service="bank_b",
                              reason="connection") or 0) >= 1
        # the name of earlier versions, ``target``, is still accepted
        cleared = daemon.post("/api/v1/emulator/faults", {"target": "bank_b", "down": False})
        assert cleared.status_code == 200 and cleared.json()["service"] == "bank_b"
        wait_for(lambda: daemon.metric("bgmock_service_up", service="bank_b") == 1.0,
                 timeout=5, message="bank_b up again")

        lines = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
        downs = [e for e in lines if e.get("event") == "service_down" and e["service"] == "bank_b"]
        assert len(downs) == 1, downs  # a state change is logged once, not per probe


def test_sigterm_stops_within_ten_seconds_with_exit_zero(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        daemon.post("/api/v1/transactions", {"amount": "12.50"})
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        code = daemon.process.wait(timeout=15)
        elapsed = time.monotonic() - started
        assert code == 0, daemon.log()[-2000:]
        assert elapsed < 10, elapsed
        events = [json.loads(line).get("event") for line in daemon.log().splitlines()
                  if line.startswith("{")]
        assert "twin_stopped" in events


def test_port_in_use_is_a_clear_start_failure(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = daemon_env(tmp_path, TWIN_LISTEN_PORT=str(port))
        result = subprocess.run([sys.executable, "-m", "bgmock_twin", "run"], env=env,
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "start_failed" in result.stderr


def test_embedded_daemon_over_real_kafka(tmp_path: Path, kafka_broker: TansuBroker) -> None:
    with running_daemon(tmp_path, KAFKA_BOOTSTRAP_SERVERS=kafka_broker.bootstrap,
                        TWIN_KAFKA_SESSION_TIMEOUT_MS="6000") as daemon:
        wait_for(lambda: daemon.metric("bgmock_service_up", service="kafka") == 1.0,
                 timeout=10, message="kafka up")


def test_unreachable_bgmock_is_reported_not_fatal(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with running_daemon(tmp_path, ready=False, BANK_A_URL=dead, BANK_B_URL=dead,
                        CLEARING_SERVICE_URL=dead, KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
                        TWIN_LOAD_RATE="0") as daemon:
        wait_for(lambda: daemon.get("/healthz").status_code == 200, timeout=30,
                 message="healthz")
        for service in ("bank_a", "bank_b", "clearing", "kafka"):
            wait_for(lambda s=service: daemon.metric("bgmock_service_up", service=s) == 0.0,
                     timeout=10, message=f"{service} down")
        assert daemon.process.poll() is None
