"""Fault: start-up that cannot work, or takes long (issue 15, point 6).

Real ``bgmock-twin run`` processes:

- settings that would validate in pydantic but cannot work stop the command at once
  with exit code 2 and one line naming the setting (never at run time, with 1);
- an unreachable broker in embedded mode: ``/healthz`` answers from the first second,
  ``/readyz`` says what is still starting, and the error names the broker and how
  long it tried;
- a SIGKILLed embedded twin started again on the same broker and consumer group
  listens from the first second, while its groups rebalance.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.broker import TansuBroker
from tests.support.daemon import daemon_env, running_daemon
from tests.support.ports import free_port, wait_for
from tests.support.processes import stop_process

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TWIN_RETENTION_DAYS", "inf"),
        ("TWIN_RETENTION_DAYS", "1e308"),
        ("KAFKA_BOOTSTRAP_SERVERS", "broker :9092"),
        ("KAFKA_BOOTSTRAP_SERVERS", "PLAINTEXT://broker:9092"),
        ("KAFKA_BOOTSTRAP_SERVERS", "user:secret@broker:9092"),
        ("KAFKA_BOOTSTRAP_SERVERS", "broker:\uff19\uff10\uff19\uff12"),
        ("KAFKA_BOOTSTRAP_SERVERS", "broker:\u0669\u0660\u0669\u0662"),
        ("TWIN_DATABASE_URL", "mysql://twin@db/ledger"),
        ("TWIN_DATABASE_URL", "postgresql+asyncpg://twin@db/ledger"),
        ("TWIN_LOAD_AMOUNT_MAX", "\u0661\u0662\u0663"),
        ("TWIN_LOAD_AMOUNT_MAX", "\uff15"),
        ("TWIN_LOAD_AMOUNT_MAX", "1_000"),
        ("TWIN_ACCOUNTS_PER_BANK", "true"),
        ("TWIN_MAX_IN_FLIGHT_REQUESTS", "1_0"),
    ],
)
def test_settings_that_cannot_work_exit_2_naming_the_setting(
        tmp_path: Path, name: str, value: str) -> None:
    env = daemon_env(tmp_path, TWIN_LISTEN_PORT=str(free_port()), **{name: value})
    result = subprocess.run([sys.executable, "-m", "bgmock_twin", "run"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr + result.stdout[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("bgmock-twin: invalid setting") for line in lines), \
        result.stderr
    assert name in result.stderr
    assert value not in result.stderr  # the value is never echoed (it may be a secret)


def test_unreachable_broker_healthz_at_once_and_the_error_names_it(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    port = free_port()
    env = daemon_env(tmp_path, TWIN_LISTEN_PORT=str(port), KAFKA_BOOTSTRAP_SERVERS=dead)
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bgmock_twin", "run"], env=env,
                                   cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/healthz", timeout=2).status_code == 200,
                 timeout=30, interval=0.05, message="/healthz while the broker is tried")
        assert process.poll() is None, "exited before /healthz answered"
        ready = requests.get(url + "/readyz", timeout=5)
        assert ready.status_code == 503
        reasons = ready.json()["reasons"]
        assert any(r.startswith("starting: ") for r in reasons), reasons
        control = requests.get(url + "/api/v1/status", timeout=5)
        assert control.status_code == 503 and "starting" in control.json()["error"]
        assert process.wait(timeout=90) == 1
    finally:
        stop_process(process)
    text = log.read_text(errors="replace")
    assert f"Kafka broker {dead} unreachable" in text, text[-3000:]
    assert "tried for" in text


def test_sigkilled_twin_listens_from_the_first_second_while_groups_rebalance(
        tmp_path: Path, kafka_broker: TansuBroker) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap, "TWIN_LOAD_RATE": "0",
           "TWIN_INSTANCE_ID": "rekilled", "TWIN_KAFKA_SESSION_TIMEOUT_MS": "20000"}
    with running_daemon(tmp_path, **env) as first:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
    port = free_port()
    log = tmp_path / "second.log"
    spawned = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bgmock_twin", "run"], cwd=tmp_path, stdout=out,
            stderr=subprocess.STDOUT,
            env=daemon_env(tmp_path, TWIN_LISTEN_PORT=str(port), **env))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/healthz", timeout=2).status_code == 200,
                 timeout=60, interval=0.05, message="/healthz of the restarted twin")
        first_alive = time.monotonic() - spawned
        not_ready: list[list[str]] = []

        def ready() -> bool:
            answer = requests.get(url + "/readyz", timeout=5)
            if answer.status_code == 503:
                not_ready.append(answer.json()["reasons"])
            return answer.status_code == 200

        wait_for(ready, timeout=120, interval=0.2, message="/readyz of the restarted twin")
        first_ready = time.monotonic() - spawned
    finally:
        stop_process(process)
    # listening came first, and every "not ready" said why
    assert first_alive <= first_ready
    assert all(reasons for reasons in not_ready), not_ready
    assert first_alive < 15, f"nothing listened for {first_alive:.1f} s"
