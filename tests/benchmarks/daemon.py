"""The twin as a user runs it, for the benchmarks: ``bgmock-twin run`` in its own
process, driven only through its public surfaces (the control API, ``/metrics``,
``/proc`` for its CPU and memory), and the fast sink (``sink.py``) in another.

Nothing here reaches into the twin's internals, so the benchmarks keep measuring
the same things when the sender, follower or ledger are rebuilt.
"""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from bgmock_twin.bus.kafka import KafkaBus
from bgmock_twin.contract import TOPICS
from tests.benchmarks.common import clean_env, memory_kib, process_cpu_seconds
from tests.support.broker import TansuBroker
from tests.support.ports import free_port, wait_for
from tests.support.processes import stop_process

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[^}]*)\})? (?P<value>\S+)")


def listen_port() -> int:
    """A free port below the kernel's ephemeral range: a twin that takes long to
    bind (loading a big ledger) must not find its port taken by one of the outbound
    connections it, or anything else here, opened meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` in a Prometheus text page whose labels
    include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match or match["name"] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match["value"])
    return total


class SinkProcess:
    """``python -m tests.benchmarks.sink`` on free ports; POST arrival times on demand."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        self.workdir = workdir
        self.extra = extra
        self.process: subprocess.Popen[str] | None = None
        self.urls: dict[str, str] = {}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> SinkProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.sink", *self.extra], env=clean_env(),
            stdout=subprocess.PIPE, stderr=(self.workdir / "sink.log").open("w"), text=True,
            stdin=subprocess.DEVNULL)
        assert self.process.stdout is not None
        ports = json.loads(self.process.stdout.readline() or "{}")
        if not ports:
            raise RuntimeError(f"sink did not start: {(self.workdir / 'sink.log').read_text()}")
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        return self

    def reset(self) -> None:
        requests.post(self.urls["bank_a"] + "/_sink/reset", timeout=10).raise_for_status()

    def arrivals(self) -> list[float]:
        """Monotonic times of every payment POST since the last reset (both banks)."""
        answer = requests.get(self.urls["bank_a"] + "/_sink/stats", timeout=30)
        answer.raise_for_status()
        return sorted(answer.json()["times"])

    def stop(self) -> None:
        stop_process(self.process, grace=5)
        self.process = None

    def __enter__(self) -> SinkProcess:
        return self if self.process is not None else self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class TwinDaemon:
    """``bgmock-twin run``: against ``urls`` (external mode) or embedded when None;
    its ledger in ``workdir`` unless ``database_url`` is given; Kafka when ``kafka``
    is given. ``env`` adds or overrides settings (the background canary is off
    unless ``env`` sets ``TWIN_LOAD_RATE``)."""

    def __init__(self, workdir: Path, urls: dict[str, str] | None = None,
                 kafka: str | None = None, database_url: str | None = None,
                 **env: str) -> None:
        self.workdir = workdir
        self.port = listen_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"twin-{self.port}.log"
        settings = {"TWIN_LISTEN_PORT": str(self.port), "TWIN_LOG_FORMAT": "json",
                    "TWIN_LOG_LEVEL": "WARNING", "TWIN_LOAD_RATE": "0",
                    "TWIN_DATABASE_URL": database_url or f"sqlite:///{workdir}/twin-ledger.db"}
        if urls is not None:
            settings.update(BANK_A_URL=urls["bank_a"], BANK_B_URL=urls["bank_b"],
                            CLEARING_SERVICE_URL=urls["clearing"])
        if kafka is not None:
            settings.update(KAFKA_BOOTSTRAP_SERVERS=kafka, TWIN_KAFKA_SESSION_TIMEOUT_MS="6000")
        settings["TWIN_INSTANCE_ID"] = f"bench-{self.port}"
        settings.update(env)
        self.instance = settings["TWIN_INSTANCE_ID"]
        self.env = clean_env(**settings)
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _use_port(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env["TWIN_LISTEN_PORT"] = str(port)

    def start(self, timeout: float = 90, attempts: int = 3) -> TwinDaemon:
        """Start and wait until provisioned and following. The port was free when
        chosen, but other processes on this machine pick free ports too and a twin
        binds its port only after loading its ledger: a start that lost its port is
        tried again on another, and readiness is only believed from a daemon that
        names this one's instance id."""
        for attempt in range(attempts):
            if attempt:
                self._use_port(listen_port())
            if self._start_once(timeout):
                return self
        raise RuntimeError(f"bgmock-twin run did not start in {attempts} attempts: "
                           f"{self.log_path.read_text(errors='replace')[-2000:]}")

    def _start_once(self, timeout: float) -> bool:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bgmock_twin", "run"], env=self.env, cwd=self.workdir,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    text = self.log_path.read_text(errors="replace")
                    if "address already in use" in text[-5000:]:
                        return False
                    raise RuntimeError(f"twin exited: {text[-2000:]}")
                try:
                    status = self.status()
                except (requests.RequestException, ValueError):
                    status = {}
                payments = status.get("payments", {})
                if status.get("instance") == self.instance and payments.get("provisioned") \
                        and payments.get("following"):
                    return True
                time.sleep(0.2)
            raise TimeoutError(f"bgmock-twin run not ready in {timeout:g} s: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")
        except BaseException:
            self.stop()
            raise

    def status(self) -> dict[str, Any]:
        answer = self.session.get(self.url + "/api/v1/status", timeout=10)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def simulate(self, rate: float, count: int, channel: str = "rest",
                 name: str = "bench") -> str:
        answer = self.session.post(self.url + "/api/v1/simulations", json={
            "count": count, "rate": rate, "channel": channel, "name": name}, timeout=10)
        answer.raise_for_status()
        return str(answer.json()["id"])

    def simulation(self, simulation_id: str) -> dict[str, Any]:
        answer = self.session.get(f"{self.url}/api/v1/simulations/{simulation_id}", timeout=30)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def stop_simulation(self, simulation_id: str) -> None:
        answer = self.session.delete(f"{self.url}/api/v1/simulations/{simulation_id}",
                                     timeout=30)
        answer.raise_for_status()

    def wait_dispatched(self, simulation_id: str, timeout: float) -> dict[str, Any]:
        """Poll until every planned payment was sent or dropped and the send lag of
        each sent one is recorded; the simulation's detail then. While it sends, the
        list's summary is polled (the detail reads every step duration of the
        simulation from the ledger: polled four times a second, that cost the twin
        a share of a core the sender then lacked)."""
        def sent() -> bool:
            answer = self.session.get(self.url + "/api/v1/simulations", timeout=30)
            answer.raise_for_status()
            summary = next(item for item in answer.json()["items"]
                           if item["id"] == simulation_id)
            return bool(summary["dispatched"] + summary["dropped"] >= summary["planned"])

        def dispatched() -> dict[str, Any] | None:
            detail = self.simulation(simulation_id)
            progress = detail["progress"]
            if progress["notYetDue"] or \
                    progress["dispatched"] + progress["dropped"] < progress["planned"]:
                return None
            return detail if detail["sendLag"]["count"] >= progress["dispatched"] else None

        started = time.monotonic()
        wait_for(sent, timeout=timeout, interval=0.25,
                 message=f"simulation {simulation_id} sent")
        return wait_for(dispatched, timeout=max(1.0, timeout - (time.monotonic() - started)),
                        interval=0.25, message=f"simulation {simulation_id} dispatched")

    def metrics(self) -> str:
        answer = self.session.get(self.url + "/metrics", timeout=30)
        answer.raise_for_status()
        return answer.text

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def check_alive(self) -> None:
        """Raise with the end of its log if the daemon has exited."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise RuntimeError(f"bgmock-twin run exited ({code}): "
                               f"{self.log_path.read_text(errors='replace')[-3000:]}")

    def rss_bytes(self) -> int:
        self.check_alive()
        return memory_kib(self.pid)["VmRSS"] * 1024

    def stop(self) -> None:
        self.session.close()
        stop_process(self.process, grace=20)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> TwinDaemon:
        """``with twin:`` starts it; ``with twin.start(timeout=…):`` uses the one started."""
        return self if self.process is not None else self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def sink_twin(workdir: Path, following: str = "kafka",
              **env: str) -> Iterator[tuple[TwinDaemon, SinkProcess]]:
    """``bgmock-twin run`` against the sink. ``following="kafka"``: the twin follows a
    Tansu broker nobody else writes to, as a production twin follows Kafka, so it
    makes no status look-up per payment (events would make them unnecessary) and
    the figures are its sender's own; ``"rest"``: no Kafka, the twin follows every
    payment over REST (its ``rest_polling`` mode)."""
    with ExitStack() as stack:
        sink = stack.enter_context(SinkProcess(workdir))
        kafka = None
        if following == "kafka":
            broker = TansuBroker(workdir)
            broker.start()
            stack.callback(broker.stop)
            kafka = broker.bootstrap
            bus = KafkaBus(kafka, client_id="bench-topics")
            bus.ensure_topics(list(TOPICS), 3)  # as BGMock's services would have made them
            bus.close()
        twin = stack.enter_context(TwinDaemon(workdir, sink.urls, kafka=kafka, **env))
        yield twin, sink
