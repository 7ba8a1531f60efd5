"""The client commands against a real twin: ``bgmock-twin run`` (embedded) started
as a process, and ``bgmock-twin simulate|status|simulations`` run as processes the
way a user or a CI job runs them. Runs are a few payments at low rates."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, running_daemon
from tests.support.ports import free_port, wait_for
from tests.support.processes import stop_process

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "client-test-token-" + "x" * 24
# One of the twelve payments may be refused by BGMock's optimistic lock (a 500 on a
# lost race with a listener's write on the payer: faithful, rare, more so when idle);
# two may not.
SUCCESS_THRESHOLD = "success_ratio>=0.9"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "160"  # the tables' width, whatever the runner's terminal says
    env.update(extra)
    return env


def client(*args: str, env: dict[str, str] | None = None, timeout: float = 90,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bgmock_twin", *args], env=env or _env(),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("twin"), TWIN_LOAD_RATE="0") as daemon:
        yield daemon


def _simulations(twin: Daemon) -> dict[str, dict[str, object]]:
    return {s["id"]: s for s in twin.get("/api/v1/simulations").json()["items"]}


def _started_id(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.startswith("simulation ")
                and " started on " in line)
    return line.split()[1]


def test_a_run_that_meets_its_thresholds_exits_0_with_summary_and_every_payment(
    twin: Daemon, tmp_path: Path,
) -> None:
    out, payments = tmp_path / "summary.json", tmp_path / "payments.csv"
    result = client(
        "simulate", "--url", twin.url, "--rate", "8", "--count", "12", "--name", "ci-pass",
        "--wait", "--threshold", SUCCESS_THRESHOLD, "--threshold", "dropped==0",
        "--threshold", "stuck==0", "--threshold", "p95_total<30",
        "--out", str(out), "--csv", str(payments),
        "--progress-every", "1s",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sim_id = _started_id(result.stdout)
    # plain progress lines (stdout is not a terminal), then the summary table
    assert "sent, " in result.stdout and "in flight" in result.stdout
    for label in ("planned", "dispatched", "dropped", "achieved rate", "latency (s)",
                  "total", "settled", "send lag", SUCCESS_THRESHOLD):
        assert label in result.stdout, label
    assert "FAILED" not in result.stdout
    # every statistic of the summary comes from the twin now
    assert "not given by the twin's API" not in result.stdout
    header = next(line for line in result.stdout.splitlines() if "latency (s)" in line)
    assert header.split()[2:] == ["count", "min", "mean", "p50", "p90", "p95", "p99", "max"]

    # the twin agrees it finished
    detail = twin.get(f"/api/v1/simulations/{sim_id}").json()
    assert detail["state"] == "finished" and detail["dispatched"] == 12

    summary = json.loads(out.read_text())
    assert summary["simulation"] == sim_id and summary["name"] == "ci-pass"
    assert (summary["planned"], summary["dispatched"], summary["dropped"]) == (12, 12, 0)
    assert summary["outcomes"] == detail["outcomes"]
    assert summary["thresholdsOk"] is True
    assert [t["threshold"] for t in summary["thresholds"]] == [
        SUCCESS_THRESHOLD, "dropped==0", "stuck==0", "p95_total<30"]
    assert summary["values"]["p95_total"] == detail["latency"]["total"]["p95"]
    assert summary["values"]["p90_settled"] == detail["latency"]["steps"]["settled"]["p90"]
    assert summary["statsNotGivenByTheApi"] == []
    # 8/s asked: the twin's own figure, 12 payments over the 1.5 s they take at 8/s
    assert summary["achievedRate"] == detail["results"]["achievedRate"]
    assert 6 < summary["achievedRate"] <= 8.0
    assert summary["csv"]["payments"] == 12

    # every payment, read over three pages of five
    with payments.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    assert len({r["payment_id"] for r in rows}) == 12
    assert {r["simulation_id"] for r in rows} == {sim_id}
    api_ids = {t["paymentId"] for t in twin.get(
        "/api/v1/transactions", params={"simulation": sim_id, "limit": 100}).json()["items"]}
    assert {r["payment_id"] for r in rows} == api_ids


def test_a_threshold_that_cannot_hold_exits_99_naming_it(twin: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    result = client("simulate", "--url", twin.url, "--rate", "10", "--count", "4",
                    "--threshold", "p95_total<0.001", "--threshold", "success_ratio>=0.5",
                    "--out", str(out))
    assert result.returncode == 99, result.stdout + result.stderr
    assert "threshold failed: p95_total<0.001 (p95_total = " in result.stderr
    assert "success_ratio>=0.5" not in result.stderr
    assert "FAILED" in result.stdout  # the verdict table
    verdicts = {t["threshold"]: t["ok"] for t in json.loads(out.read_text())["thresholds"]}
    assert verdicts == {"p95_total<0.001": False, "success_ratio>=0.5": True}


def test_a_value_the_twin_does_not_give_fails_its_threshold(twin: Daemon) -> None:
    # every payment refused at once: no payment has a total latency
    result = client("simulate", "--url", twin.url, "--rate", "10", "--count", "2",
                    "--failure-share", "1", "--failure-kinds", "insufficient_funds",
                    "--threshold", "p90_total<1000")
    assert result.returncode == 99, result.stdout + result.stderr
    assert "threshold failed: p90_total<1000 (p90_total = no value)" in result.stderr


def test_duration_is_sent_and_the_twin_plans_the_count(twin: Daemon) -> None:
    result = client("simulate", "--url", twin.url, "--rate", "4", "--duration", "1500ms",
                    "--name", "by-duration")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 payments in 1.5 s, constant profile" in result.stdout
    sim_id = _started_id(result.stdout)
    listed = _simulations(twin)[sim_id]
    assert (listed["planned"], listed["durationSeconds"]) == (6, 1.5)


def test_a_wave_run_from_the_client(twin: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "wave.json"
    result = client("simulate", "--url", twin.url, "--profile", "wave", "--wave-base", "6",
                    "--wave-amplitude", "4", "--wave-period", "1s", "--duration", "2s",
                    "--threshold", "dropped==0", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(out.read_text())
    # two whole periods of a wave around 6/s: 12 payments
    assert (summary["planned"], summary["dispatched"]) == (12, 12)
    assert summary["spec"]["profile"] == "wave"
    assert summary["spec"]["waveBase"] == 6.0 and summary["durationSeconds"] == 2.0


def test_runs_that_cannot_be_made_exit_2_and_start_nothing(twin: Daemon) -> None:
    before = set(_simulations(twin))
    unreachable = client("simulate", "--url", f"http://127.0.0.1:{free_port()}",
                         "--rate", "1", "--count", "1", "--wait")
    assert unreachable.returncode == 2
    assert "cannot reach the twin at http://127.0.0.1:" in unreachable.stderr
    syntax = client("simulate", "--url", twin.url, "--rate", "1", "--count", "1",
                    "--threshold", "p95_total=>5")
    assert syntax.returncode == 2
    assert "cannot read threshold 'p95_total=>5'" in syntax.stderr
    unknown = client("simulate", "--url", twin.url, "--rate", "1", "--count", "1",
                     "--threshold", "p95_totl<5")
    assert unknown.returncode == 2
    assert "unknown threshold name 'p95_totl'" in unknown.stderr
    assert "p95_total" in unknown.stderr
    refused = client("simulate", "--url", twin.url, "--rate", "1", "--count", "1",
                     "--amount-min", "50", "--amount-max", "1")
    assert refused.returncode == 2
    assert "the twin refused POST /api/v1/simulations (422)" in refused.stderr
    incomplete = client("simulate", "--url", twin.url, "--profile", "ramp", "--duration", "5s")
    assert incomplete.returncode == 2
    assert "--profile ramp needs --ramp-from, --ramp-to and --ramp-duration" in incomplete.stderr
    nowhere = client("simulate", "--url", twin.url, "--rate", "1", "--count", "1",
                     "--out", "/nonexistent-dir/summary.json")
    assert nowhere.returncode == 2 and "--out /nonexistent-dir/summary.json" in nowhere.stderr
    assert set(_simulations(twin)) == before


def test_ctrl_c_stops_the_simulation_on_the_twin_and_still_prints_the_summary(
    twin: Daemon, tmp_path: Path,
) -> None:
    out = tmp_path / "summary.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "bgmock_twin", "simulate", "--url", twin.url, "--rate", "2",
         "--count", "200", "--wait", "--out", str(out), "--progress-every", "1s"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def running() -> str | None:
            live = [s for s in _simulations(twin).values()
                    if s["state"] == "running" and s["planned"] == 200]
            return str(live[0]["id"]) if live and int(str(live[0]["dispatched"])) >= 3 else None

        sim_id = wait_for(running, timeout=30, interval=0.2, message="simulation sending")
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        stop_process(process)
    assert process.returncode == 130, stdout + stderr
    assert "interrupted: stopping the simulation on the twin" in stderr
    assert f"simulation {sim_id}" in stdout
    assert "stopped (interrupted: stopped by Ctrl-C)" in stdout
    assert "latency (s)" in stdout
    detail = twin.get(f"/api/v1/simulations/{sim_id}").json()
    assert detail["state"] == "stopped"
    assert 3 <= detail["dispatched"] < 200
    summary = json.loads(out.read_text())
    assert summary["interrupted"] is True and summary["state"] == "stopped"
    # nothing more is sent after the stop
    time.sleep(1.5)
    assert twin.get(f"/api/v1/simulations/{sim_id}").json()["dispatched"] == \
        detail["dispatched"]


def test_status_and_simulations_print_tables(twin: Daemon) -> None:
    created = twin.post("/api/v1/simulations", json={"count": 2, "rate": 5,
                                                     "name": "listed"}).json()
    status = client("status", "--url", twin.url)
    assert status.returncode == 0, status.stderr
    assert "mode embedded" in status.stdout
    for service in ("bank_a", "bank_b", "clearing", "kafka", "db_switch"):
        assert service in status.stdout
    assert "started 20" in status.stdout  # startedAt (or started_at) read
    assert "submitted" in status.stdout and "books:" in status.stdout
    sims = client("simulations", "--url", twin.url)
    assert sims.returncode == 0, sims.stderr
    line = next(row for row in sims.stdout.splitlines() if created["id"] in row)
    assert "listed" in line and "/2" in line
    one = client("simulations", created["id"], "--url", twin.url)
    assert one.returncode == 0 and "latency (s)" in one.stdout
    missing = client("simulations", str(uuid.uuid4()), "--url", twin.url)
    assert missing.returncode == 2 and "(404): no such simulation" in missing.stderr


def test_client_commands_need_no_daemon_settings(twin: Daemon) -> None:
    env = _env(TWIN_LISTEN_PORT="-1", DB_BANK_A="not a url")
    assert client("status", "--url", twin.url, env=env).returncode == 0
    assert client("check-config", env=env).returncode == 2


def test_run_help_and_flags_that_override_the_environment(tmp_path: Path) -> None:
    helped = client("run", "--help")
    assert helped.returncode == 0
    for text in ("--listen-port", "--log-level", "--database-url", "TWIN_LISTEN_PORT",
                 "check-config"):
        assert text in helped.stdout
    config = client("check-config", "--listen-port", "18123", "--log-level", "DEBUG",
                    env=_env(TWIN_LISTEN_PORT="9000", TWIN_LOG_LEVEL="INFO"), cwd=tmp_path)
    assert config.returncode == 0, config.stderr
    effective = json.loads(config.stdout)
    assert (effective["TWIN_LISTEN_PORT"], effective["TWIN_LOG_LEVEL"]) == (18123, "DEBUG")
    bad = client("check-config", "--listen-port", "-3", cwd=tmp_path)
    assert bad.returncode == 2 and "TWIN_LISTEN_PORT" in bad.stderr


def test_a_wrong_token_gives_a_clear_error(tmp_path: Path) -> None:
    with running_daemon(tmp_path, TWIN_LOAD_RATE="0", TWIN_CONTROL_TOKEN=TOKEN) as daemon:
        wrong = client("simulate", "--url", daemon.url, "--rate", "1", "--count", "1",
                       "--token", "not-the-token-" + "y" * 20)
        assert wrong.returncode == 2
        assert "the twin refused the control token (401)" in wrong.stderr
        assert "not-the-token" not in wrong.stderr + wrong.stdout
        none = client("simulate", "--url", daemon.url, "--rate", "1", "--count", "1")
        assert none.returncode == 2 and "(401)" in none.stderr
        assert daemon.get("/api/v1/simulations").json()["items"] == []
        right = client("simulate", "--url", daemon.url, "--rate", "5", "--count", "2",
                       "--threshold", "dropped==0", env=_env(TWIN_CONTROL_TOKEN=TOKEN))
        assert right.returncode == 0, right.stdout + right.stderr


def test_on_a_terminal_the_live_line_is_a_rich_progress_bar(twin: Daemon) -> None:
    """Under a pseudo-terminal the progress is redrawn in place (carriage returns,
    cursor control), not printed as plain lines, and the summary follows."""
    import pty

    main_fd, child_fd = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "bgmock_twin", "simulate", "--url", twin.url, "--rate", "5",
         "--count", "5", "--wait", "--threshold", "dropped==0"],
        env=_env(COLUMNS="160", TERM="xterm"), stdin=subprocess.DEVNULL, stdout=child_fd,
        stderr=child_fd,
    )
    os.close(child_fd)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=60)
    finally:
        os.close(main_fd)
        stop_process(process)
    text = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, text
    assert "\x1b[" in text and "\r" in text  # redrawn in place
    assert "running: " not in text  # no plain lines
    assert "5/5 sent" in text and "latency (s)" in text and "dropped==0" in text
