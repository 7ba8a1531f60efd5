"""Simulations sized by a duration and paced on a wave, against a real
``bgmock-twin run`` (embedded emulator) process: the planned counts, the dispatch
schedule, the achieved rate, ``Location`` on 202, the full statistics and
threshold-ready results, the finish log line, and one log line per burst of drops.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bgmock_twin.tracking import pacing
from tests.support.daemon import Daemon, running_daemon
from tests.support.faultkit import lost_race, metric_sum, payments
from tests.support.ports import wait_for

pytestmark = pytest.mark.slow  # started first by make test's workers (conftest)

STATS = ("min", "mean", "p50", "p90", "p95", "p99", "max")


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("twin"), TWIN_LOAD_RATE="0") as daemon:
        yield daemon


def _finished(twin: Daemon, sim_id: str, timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        detail: dict[str, Any] = twin.get(f"/api/v1/simulations/{sim_id}").json()
        return detail if detail["state"] == "finished" else None

    return wait_for(done, timeout=timeout, interval=0.3, message=f"simulation {sim_id} finished")


def _log_lines(twin: Daemon, event: str) -> list[dict[str, Any]]:
    lines = []
    for line in twin.log().splitlines():
        if f'"{event}"' in line:
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def _send_offsets(twin: Daemon, sim_id: str) -> list[float]:
    items = twin.get("/api/v1/transactions",
                     params={"simulation": sim_id, "limit": 1000}).json()["items"]
    times = sorted(datetime.fromisoformat(i["intendedAt"]) for i in items)
    return [(t - times[0]).total_seconds() for t in times]


def _lost_races(twin: Daemon) -> int:
    """Payment POSTs the emulated banks answered 500 so far: the payer's versioned
    write lost BGMock's optimistic-lock race with a listener's write on the same
    account (the contract's correction; faithful, and rarer the less loaded the
    machine). The twin counts each as the bank's certain rejection."""
    return round(metric_sum(twin, "bgmock_emulator_optimistic_lock_failures_total",
                            origin="rest"))


def test_a_duration_run_plans_the_profiles_count_and_holds_the_rate(twin: Daemon) -> None:
    races_before = _lost_races(twin)
    answer = twin.post("/api/v1/simulations",
                       json={"rate": 20, "duration": 3, "name": "three-seconds"})
    assert answer.status_code == 202, answer.text
    created = answer.json()
    assert (created["planned"], created["durationSeconds"]) == (60, 3.0)
    # Location names the new simulation, and it is there
    location = answer.headers["Location"]
    assert location == f"/api/v1/simulations/{created['id']}"
    assert twin.get(location).status_code == 200
    post = twin.get("/openapi.json").json()["paths"]["/api/v1/simulations"]["post"]
    assert "Location" in post["responses"]["202"]["headers"]

    detail = _finished(twin, created["id"])
    assert (detail["dispatched"], detail["dropped"]) == (60, 0)
    results = detail["results"]
    # 60 payments over the 3 s they take at 20/s: within 5 % on a loaded machine
    assert results["achievedRate"] == pytest.approx(20.0, rel=0.05)
    assert detail["achievedRate"] == results["achievedRate"]
    assert 2.9 <= results["sendingSeconds"] <= 3.2
    # every payment succeeded but for those BGMock refused on a lost race (none, mostly)
    lost = _lost_races(twin) - races_before
    refused = [item for item in payments(twin, created["id"]) if item["status"] != "success"]
    assert len(refused) == lost, refused
    assert all(lost_race(item) for item in refused), refused
    assert results["successRatio"] == pytest.approx((60 - lost) / 60, abs=1e-6)
    assert results["errorRatio"] == pytest.approx(lost / 60, abs=1e-6)
    assert results["dropRatio"] == 0
    assert (results["success"], results["stuck"], results["unfinished"]) == (60 - lost, 0, 0)
    assert results["success"] == detail["outcomes"]["success"]
    # every statistic, per step and for the total, in order
    for row in [detail["latency"]["total"], *detail["latency"]["steps"].values()]:
        if row["count"]:
            values = [row[s] for s in ("min", "p50", "p90", "p95", "p99", "max")]
            assert values == sorted(values), row
            assert row["min"] <= row["mean"] <= row["max"]
    assert detail["latency"]["total"]["count"] == 60 - lost  # a refused payment has none
    assert set(STATS) <= set(detail["sendLag"])

    finish = [line for line in _log_lines(twin, "simulation_finished")
              if line.get("simulation") == created["id"]]
    assert len(finish) == 1
    assert finish[0]["achieved_rate"] == pytest.approx(20.0, rel=0.05)
    assert (finish[0]["success_ratio"], finish[0]["dropped"], finish[0]["stuck"]) == (
        results["successRatio"], 0, 0)
    assert finish[0]["p95_total"] == detail["latency"]["total"]["p95"]


def test_a_wave_run_rises_and_falls_and_sends_its_integral(twin: Daemon) -> None:
    wave = {"baseRate": 10, "amplitude": 8, "periodSeconds": 2}
    answer = twin.post("/api/v1/simulations",
                       json={"profile": "wave", "wave": wave, "duration": 4})
    assert answer.status_code == 202, answer.text
    created = answer.json()
    # two whole periods: the sine cancels, 10/s * 4 s
    assert (created["planned"], created["profile"]) == (40, "wave")
    detail = _finished(twin, created["id"])
    assert (detail["dispatched"], detail["dropped"]) == (40, 0)
    assert detail["spec"]["waveAmplitude"] == 8
    assert detail["results"]["achievedRate"] == pytest.approx(10.0, rel=0.05)
    # the intended send times are the wave's schedule: crests dense, troughs sparse
    offsets = _send_offsets(twin, created["id"])
    expected = list(pacing.offsets(pacing.wave(10, 8, 2), 40))
    assert offsets == pytest.approx(expected, abs=0.002)
    crest = sum(1 for t in offsets if (t % 2) < 1)
    # 10 + 16/pi = 15.09 due in each rising half: 16 in each, 4 in each falling half
    assert (crest, len(offsets) - crest) == (2 * math.ceil(10 + 16 / math.pi), 8)


def test_a_clipped_wave_and_a_ramp_by_duration(twin: Daemon) -> None:
    clipped = twin.post("/api/v1/simulations", json={
        "profile": "wave", "wave": {"baseRate": 2, "amplitude": 6, "periodSeconds": 4},
        "duration": 7.5})
    assert clipped.status_code == 202, clipped.text
    assert clipped.json()["planned"] == pacing.count_for_duration(pacing.wave(2, 6, 4), 7.5)
    ramp = twin.post("/api/v1/simulations", json={
        "profile": "ramp", "ramp": {"fromRate": 0, "toRate": 10, "duration": 2}, "duration": 3})
    assert ramp.status_code == 202, ramp.text
    assert ramp.json()["planned"] == 20  # 10 on the ramp, then 10/s for a second
    for created in (clipped.json(), ramp.json()):
        detail = _finished(twin, created["id"])
        assert detail["dispatched"] == created["planned"]


@pytest.mark.parametrize(("body", "field"), [
    ({"rate": 5, "count": 10, "duration": 2}, "exactly one of count"),
    ({"rate": 5}, "exactly one of count"),
    ({"profile": "wave", "duration": 2}, "profile wave needs wave"),
    ({"profile": "wave", "wave": {"baseRate": 0, "amplitude": 1, "periodSeconds": 2},
      "duration": 2}, "baseRate"),
    ({"profile": "wave", "wave": {"baseRate": 1, "amplitude": -1, "periodSeconds": 2},
      "duration": 2}, "amplitude"),
    ({"rate": 5, "duration": 0}, "duration"),
    ({"rate": 1000, "duration": 86400}, "at most 100000"),
])
def test_bad_sizes_and_waves_are_4xx_naming_why(twin: Daemon, body: dict[str, Any],
                                                field: str) -> None:
    before = len(twin.get("/api/v1/simulations").json()["items"])
    answer = twin.post("/api/v1/simulations", json=body)
    assert answer.status_code == 422, answer.text
    assert field in answer.text
    assert len(twin.get("/api/v1/simulations").json()["items"]) == before


def test_a_burst_of_drops_is_one_log_line_with_its_count(tmp_path: Path) -> None:
    with running_daemon(tmp_path, TWIN_LOAD_RATE="0", TWIN_MAX_IN_FLIGHT_REQUESTS="1") as twin:
        wait_for(lambda: twin.get("/api/v1/status").json()["payments"]["provisioned"] is True,
                 timeout=60, interval=0.2, message="twin accounts provisioned")
        for bank in ("bank_a", "bank_b"):
            slow = twin.post("/api/v1/emulator/faults",
                             {"service": bank, "latencySeconds": 4})
            assert slow.status_code == 200, slow.text
        # the first payment holds the only slot for 4 s: the other 29 due within
        # 1.5 s are dropped, one after the other
        created = twin.post("/api/v1/simulations", json={"rate": 20, "count": 30}).json()

        def sending_done() -> dict[str, Any] | None:
            sims = {s["id"]: s for s in twin.get("/api/v1/simulations").json()["items"]}
            sim = sims[created["id"]]
            return sim if sim["dispatched"] + sim["dropped"] == 30 else None

        sim = wait_for(sending_done, timeout=60, interval=0.2, message="all due")
        assert (sim["dispatched"], sim["dropped"]) == (1, 29)
        lines = wait_for(lambda: [line for line in _log_lines(twin, "payments_dropped")
                                  if line.get("simulation") == created["id"]] or None,
                         timeout=30, interval=0.2, message="the drop line")
        assert len(lines) == 1, lines
        assert (lines[0]["dropped"], lines[0]["dropped_in_run"]) == (29, 29)
        assert lines[0]["reason"] == "concurrency bound reached"
        assert 1.0 < lines[0]["over_seconds"] < 2.0
        assert '"payment_dropped"' not in twin.log()
        assert twin.metric("bgmock_payments_dropped_total") == 29
