"""What every benchmark shares: the machine's conditions, result lines, CPU and memory
accounting read from ``/proc`` (no psutil), and the processes a benchmark runs
against: ``bgmock-twin emulate`` on free ports and a Tansu broker.

A result is printed as one ``RESULT`` line with the conditions it was measured
under (cores, load average, Python version, CPU model), and appended as JSON to the
file named by ``--results`` so ``python -m tests.benchmarks`` can print a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from tests.support.ports import free_port, wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")
BGMOCK_ENV_PREFIXES = ("TWIN_", "KAFKA_", "BANK_", "DB_", "CLEARING_")


# --- machine conditions ---------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def conditions() -> dict[str, Any]:
    """The machine as it is right now."""
    return {
        "cores": os.cpu_count() or 0,
        "load": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "cpu": cpu_model(),
    }


def conditions_text(c: dict[str, Any]) -> str:
    load = "/".join(f"{x:.2f}" for x in c["load"])
    return f"cores={c['cores']} load1/5/15={load} python={c['python']} cpu={c['cpu']!r}"


# --- results ---------------------------------------------------------------------------------
@dataclass
class Result:
    """One figure. ``met`` is None when the figure has no target."""

    name: str
    value: float
    unit: str
    target: str = ""
    met: bool | None = None
    detail: str = ""
    conditions: dict[str, Any] = field(default_factory=conditions)

    def line(self) -> str:
        verdict = ""
        if self.target:
            verdict = f"  [target {self.target}: {'MET' if self.met else 'MISSED'}]"
        detail = f"  ({self.detail})" if self.detail else ""
        return (f"RESULT {self.name} = {fmt(self.value)} {self.unit}{verdict}{detail}"
                f"  {{{conditions_text(self.conditions)}}}")


def fmt(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


class Reporter:
    """Prints results as they come and appends them to the ``--results`` file."""

    def __init__(self, results_path: str | None) -> None:
        self.path = Path(results_path) if results_path else None
        self.results: list[Result] = []

    def emit(self, result: Result) -> Result:
        self.results.append(result)
        print(result.line(), flush=True)
        if self.path is not None:
            with self.path.open("a") as out:
                out.write(json.dumps(asdict(result)) + "\n")
        return result

    def note(self, text: str) -> None:
        print(f"  {text}", flush=True)


def arguments(description: str, argv: Sequence[str] | None = None,
              extra: Any = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long run that proves the benchmark works")
    parser.add_argument("--results", help="append each result as a JSON line to this file")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


def banner(title: str) -> None:
    print(f"== {title}  {{{conditions_text(conditions())}}}", flush=True)


# --- accounting ------------------------------------------------------------------------------
def own_cpu_seconds() -> float:
    """CPU seconds (user + system, every thread) this process used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of another process, every thread, from ``/proc/<pid>/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment without any BGMock/twin settings of the caller, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(BGMOCK_ENV_PREFIXES)}
    env.update(overrides)
    return env


# --- the emulator in its own process -----------------------------------------------------
class EmulatorProcess:
    """``bgmock-twin emulate`` on free ports (in-process bus unless ``kafka`` is given)."""

    def __init__(self, workdir: Path, kafka: str | None = None) -> None:
        self.workdir = workdir
        self.kafka = kafka
        self.ports = {name: free_port() for name in ("bank_a", "bank_b", "clearing", "admin")}
        self.log_path = workdir / f"emulator-{self.ports['bank_a']}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> dict[str, str]:
        return {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()
                if name != "admin"}

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> EmulatorProcess:
        env = clean_env(
            TWIN_EMULATOR_BANK_A_PORT=str(self.ports["bank_a"]),
            TWIN_EMULATOR_BANK_B_PORT=str(self.ports["bank_b"]),
            TWIN_EMULATOR_CLEARING_PORT=str(self.ports["clearing"]),
            TWIN_EMULATOR_ADMIN_PORT=str(self.ports["admin"]),
            TWIN_LOG_LEVEL="WARNING", TWIN_LOG_FORMAT="json",
        )
        if self.kafka:
            env["KAFKA_BOOTSTRAP_SERVERS"] = self.kafka
            env["TWIN_KAFKA_SESSION_TIMEOUT_MS"] = "6000"  # Tansu assigns after ~half of it
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bgmock_twin", "emulate"], env=env, cwd=self.workdir,
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        health = {"bank_a": "/bank/health", "bank_b": "/bank/health",
                  "clearing": "/clearing/health"}

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"emulator exited: {self.log_path.read_text()[-2000:]}")
            return all(requests.get(self.urls[name] + path, timeout=1).status_code == 200
                       for name, path in health.items())

        try:
            wait_for(healthy, timeout=60, interval=0.1, message="bgmock-twin emulate")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def wait_seconds(seconds: float) -> None:
    """Sleep on the monotonic clock (benchmarks pace themselves; tests never do)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))
