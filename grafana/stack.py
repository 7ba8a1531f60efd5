"""A real twin and a real Prometheus scraping it, for the data test and the pictures.

``LiveStack`` starts ``bgmock-twin run`` in embedded mode (no BGMock needed) and
``/usr/bin/prometheus`` on free loopback ports with a 1 s scrape interval, a
``namespace`` static label (so the dashboards' ``$namespace`` variable resolves)
and the alert rules loaded, then starts a simulation through the control API.
Everything it starts is stopped in ``stop()`` (terminate, then kill).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "rules" / "bgmock-twin.rules.yml"
PROMETHEUS = os.environ.get("BGMOCK_PROMETHEUS_BIN", "/usr/bin/prometheus")
NAMESPACE = "bgmock-test"
JOB = "bgmock-twin"
SIMULATION = {"count": 200, "rate": 20, "failure_share": 0.2}
# Inherited variables that would point the twin elsewhere than its embedded emulator.
_FOREIGN_ENV = ("TWIN_", "KAFKA_", "BANK_", "CLEARING_", "DB_")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(condition: Callable[[], T | None], timeout: float, what: str,
         alive: Callable[[], str | None] = lambda: None, interval: float = 0.2) -> T:
    """Return the first truthy ``condition()``; fail early if ``alive()`` says why."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        dead = alive()
        if dead:
            raise RuntimeError(f"{what}: {dead}")
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # not ready yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last error: {last!r}")


def _die_with_parent() -> None:
    """Child-side: get SIGTERM when the process that started us dies (Linux), so a
    test run killed hard leaves no twin or Prometheus behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def prometheus_config(twin_port: int, scrape_interval: float, rules: Path | None) -> str:
    config: dict[str, Any] = {
        "global": {"scrape_interval": f"{scrape_interval:g}s",
                   "evaluation_interval": f"{scrape_interval:g}s",
                   "scrape_timeout": f"{scrape_interval:g}s"},
        "scrape_configs": [{
            "job_name": JOB,
            # The twin's own `service` and scheduler `job` labels must win (see
            # deploy/prometheus/prometheus.yml).
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{twin_port}"],
                                "labels": {"namespace": NAMESPACE}}],
        }],
    }
    if rules is not None:
        config["rule_files"] = [str(rules)]
    return yaml.safe_dump(config, sort_keys=False)


def twin_command() -> list[str]:
    script = Path(sys.executable).parent / "bgmock-twin"
    return [str(script), "run"]


@dataclass
class LiveStack:
    """Twin + Prometheus in a temporary directory."""

    scrape_interval: float = 1.0
    simulation: Mapping[str, Any] | None = field(default_factory=lambda: dict(SIMULATION))
    load_rules: bool = True
    command: list[str] = field(default_factory=twin_command)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bgmock-live-")))
    twin_port: int = 0
    prom_port: int = 0
    twin: subprocess.Popen[bytes] | None = None
    prometheus: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    _logs: list[Any] = field(default_factory=list)

    @property
    def twin_url(self) -> str:
        return f"http://127.0.0.1:{self.twin_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.twin_port}"

    def _log(self, name: str) -> Any:
        handle = open(self.workdir / name, "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(handle)
        return handle

    def _twin_dead(self) -> str | None:
        if self.twin is not None and self.twin.poll() is not None:
            return (f"bgmock-twin exited with {self.twin.returncode}:\n"
                    f"{tail(self.workdir / 'twin.log')}")
        return None

    def _prometheus_dead(self) -> str | None:
        if self.prometheus is not None and self.prometheus.poll() is not None:
            return (f"prometheus exited with {self.prometheus.returncode}:\n"
                    f"{tail(self.workdir / 'prometheus.log')}")
        return None

    def diagnostics(self) -> str:
        return (f"--- twin log (tail) ---\n{tail(self.workdir / 'twin.log')}\n"
                f"--- prometheus log (tail) ---\n{tail(self.workdir / 'prometheus.log')}")

    def start(self, ready_timeout: float = 60.0) -> None:
        self.started_at = time.time()
        self.twin_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
        env.update({
            "TWIN_MODE": "embedded",
            "TWIN_INSTANCE_ID": "dashboards",
            "TWIN_LISTEN_HOST": "127.0.0.1",
            "TWIN_LISTEN_PORT": str(self.twin_port),
            "TWIN_DATABASE_URL": f"sqlite:///{self.workdir / 'twin.db'}",
            "TWIN_HEALTH_INTERVAL_SECONDS": "1",
            "TWIN_RECONCILE_INTERVAL_SECONDS": "2",
            "TWIN_LAG_INTERVAL_SECONDS": "2",
            "TWIN_LOAD_RATE": "5",
            "TWIN_LOG_FORMAT": "json",
            # BGMock's optimistic lock refuses about 1 % of payments racing a settlement
            # (the emulator's load-to-flush window): real, but enough to put the success
            # ratio under its SLO target at random in a minutes-long run. The stack shows
            # every panel and rule on a healthy twin; the race has tests of its own.
            "TWIN_EMULATOR_FLUSH_WINDOW_SECONDS": "0",
        })
        log = self._log("twin.log")
        # cwd is the temp dir so a developer's .env cannot leak into the run.
        self.twin = subprocess.Popen(self.command, cwd=self.workdir, env=env,
                                     stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_parent)

        self.prom_port = free_port()
        config = self.workdir / "prometheus.yml"
        config.write_text(prometheus_config(self.twin_port, self.scrape_interval,
                                            RULES if self.load_rules else None))
        (self.workdir / "tsdb").mkdir()
        self.prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.prom_port}",
             "--storage.tsdb.retention.time=1d", "--log.level=warn"],
            cwd=self.workdir, stdout=self._log("prometheus.log"), stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )

        poll(lambda: requests.get(self.twin_url + "/readyz", timeout=2).status_code == 200,
             ready_timeout, "bgmock-twin /readyz", self._twin_dead)
        poll(lambda: requests.get(self.prometheus_url + "/-/ready", timeout=2).ok,
             ready_timeout, "prometheus /-/ready", self._prometheus_dead)
        if self.simulation is not None:
            resp = requests.post(self.twin_url + "/api/v1/simulations",
                                 json=dict(self.simulation), timeout=10)
            if resp.status_code not in (200, 201, 202):
                raise RuntimeError(f"POST /api/v1/simulations answered {resp.status_code}: "
                                   f"{resp.text[:300]}")

    def check_alive(self) -> None:
        dead = self._twin_dead() or self._prometheus_dead()
        if dead:
            raise RuntimeError(dead)

    def stop(self) -> None:
        try:
            stop_process(self.twin)
        finally:
            try:
                stop_process(self.prometheus)
            finally:
                for handle in self._logs:
                    handle.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LiveStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
