"""The scheduler counts what APScheduler would otherwise skip silently."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY

from bgmock_twin.scheduler import Job, JobScheduler
from tests.support.ports import wait_for


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_runs_errors_and_overlaps_are_counted() -> None:
    scheduler = JobScheduler()
    release = threading.Event()
    calls = {"ok": 0}

    def ok() -> None:
        calls["ok"] += 1

    def boom() -> None:
        raise RuntimeError("expected in test")

    def slow() -> None:
        release.wait(10)

    before_ok = _value("bgmock_scheduler_job_runs_total", task="t_ok", result="success")
    before_timed = _value("bgmock_scheduler_job_duration_seconds_count", task="t_ok")
    before_err = _value("bgmock_scheduler_job_runs_total", task="t_boom", result="error")
    before_overlap = _value("bgmock_scheduler_job_max_instances_total", task="t_slow")
    scheduler.add_interval("t_ok", ok, 0.2, run_now=True)
    scheduler.add_interval("t_boom", boom, 0.2, run_now=True)
    scheduler.add_interval("t_slow", slow, 0.2, run_now=True)
    scheduler.start()
    try:
        # a run is counted once APScheduler's executed event follows the call: wait
        # for the count, not for the calls (asserting it right after raced)
        wait_for(lambda: _value("bgmock_scheduler_job_runs_total", task="t_ok",
                                result="success") >= before_ok + 2,
                 timeout=10, message="two runs counted")
        assert calls["ok"] >= 2
        wait_for(lambda: _value("bgmock_scheduler_job_runs_total", task="t_boom",
                                result="error") > before_err, timeout=10, message="error run")
        wait_for(lambda: _value("bgmock_scheduler_job_max_instances_total",
                                task="t_slow") > before_overlap, timeout=10, message="overlap")
        # timed inside the run, before the executed event counts it
        assert _value("bgmock_scheduler_job_duration_seconds_count",
                      task="t_ok") >= before_timed + 2
        assert set(scheduler.job_names()) == {"t_ok", "t_boom", "t_slow"}
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    assert not scheduler.running


def test_jobs_described_by_a_component_are_registered_by_the_wiring() -> None:
    scheduler = JobScheduler()
    ran = threading.Event()
    scheduler.add([Job("t_described", ran.set, 3600, run_now=True),
                   Job("t_later", lambda: None, 3600, misfire_grace_seconds=5)])
    scheduler.start()
    try:
        assert ran.wait(10), "run_now runs the job once at start"
        assert set(scheduler.job_names()) == {"t_described", "t_later"}
    finally:
        scheduler.shutdown(wait=True)
