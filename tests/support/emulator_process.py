"""Start ``bgmock-twin emulate`` as its own process (BGMock outliving the twin)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.support.daemon import daemon_env
from tests.support.ports import free_port, wait_for
from tests.support.processes import stop_process


@dataclass
class EmulatorProcess:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path

    @property
    def urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}

    def external_env(self) -> dict[str, str]:
        """The settings that point a twin at this emulator (external mode)."""
        return {"BANK_A_URL": self.urls["bank_a"], "BANK_B_URL": self.urls["bank_b"],
                "CLEARING_SERVICE_URL": self.urls["clearing"], "TWIN_MODE": "external"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_emulator(tmp_path: Path, **overrides: str) -> Iterator[EmulatorProcess]:
    ports = {name: free_port() for name in ("bank_a", "bank_b", "clearing", "admin")}
    env = daemon_env(tmp_path, **{
        "TWIN_EMULATOR_BANK_A_PORT": str(ports["bank_a"]),
        "TWIN_EMULATOR_BANK_B_PORT": str(ports["bank_b"]),
        "TWIN_EMULATOR_CLEARING_PORT": str(ports["clearing"]),
        "TWIN_EMULATOR_ADMIN_PORT": str(ports["admin"]),
        "TWIN_INSTANCE_ID": "emulator",
    }, **overrides)
    log_path = tmp_path / f"emulator-{ports['admin']}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bgmock_twin", "emulate"], env=env, cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    emulator = EmulatorProcess(process, ports, log_path)
    try:
        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"emulator exited {process.returncode}:\n"
                                   f"{emulator.log()[-3000:]}")
            if '"emulator_ready"' not in emulator.log():
                return False  # HTTP answers before the Kafka consumers are assigned
            return all(requests.get(f"{emulator.urls[s]}/{path}/health", timeout=2).text == "OK"
                       for s, path in (("bank_a", "bank"), ("bank_b", "bank"),
                                       ("clearing", "clearing")))

        wait_for(healthy, timeout=40, interval=0.1, message="bgmock-twin emulate healthy")
        yield emulator
    finally:
        stop_process(process)
