"""Start a real ``bgmock-twin run`` process for tests and stop it afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.support.ports import free_port, wait_for
from tests.support.processes import stop_process

BGMOCK_ENV_PREFIXES = ("TWIN_", "KAFKA_", "BANK_", "DB_", "CLEARING_")


class Daemon:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path,
                 token: str | None) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.token = token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]

    def post(self, path: str, json: object = None, **kwargs: object) -> requests.Response:
        return requests.post(self.url + path, json=json, headers=self.headers(), timeout=30,
                             **kwargs)  # type: ignore[arg-type]

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample on /metrics, or None when absent."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.get("/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def daemon_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(BGMOCK_ENV_PREFIXES)}
    env.update({
        "TWIN_DATABASE_URL": f"sqlite:///{tmp_path}/twin.db",
        "TWIN_LOG_FORMAT": "json",
        "TWIN_HEALTH_INTERVAL_SECONDS": "1",
        "TWIN_PROBE_TIMEOUT_SECONDS": "1",
        "TWIN_INSTANCE_ID": "test",
    })
    env.update(overrides)
    return env


@contextmanager
def running_daemon(tmp_path: Path, ready: bool = True, **overrides: str) -> Iterator[Daemon]:
    port = free_port()
    env = daemon_env(tmp_path, TWIN_LISTEN_PORT=str(port), **overrides)
    log_path = tmp_path / f"daemon-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bgmock_twin", "run"], env=env, cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    daemon = Daemon(process, port, log_path, overrides.get("TWIN_CONTROL_TOKEN"))
    try:
        if ready:
            def is_ready() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"daemon exited {process.returncode}:\n{daemon.log()[-3000:]}")
                return daemon.get("/readyz").status_code == 200

            wait_for(is_ready, timeout=40, interval=0.1, message="daemon /readyz")
        yield daemon
    finally:
        stop_process(process)
