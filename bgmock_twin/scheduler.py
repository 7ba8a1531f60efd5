"""A thin wrapper over APScheduler that makes late and overlapping runs visible.

APScheduler silently drops a run that is more than ``misfire_grace_time`` late and
one that would exceed ``max_instances``. Here both are counted
(``bgmock_scheduler_job_missed_total``, ``bgmock_scheduler_job_max_instances_total``)
and every run's duration and result are exported, so a starved job shows on the
Twin dashboard instead of disappearing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
    JobSubmissionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from bgmock_twin import metrics
from bgmock_twin.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    """A job a component wants run every ``interval_seconds``: the component
    describes it, the wiring registers it (``JobScheduler.add``).

    A run may start late by up to ``misfire_grace_seconds`` (default: one interval)
    before it counts as missed; ``run_now`` runs it once at start too.
    """

    name: str
    func: Callable[[], Any]
    interval_seconds: float
    misfire_grace_seconds: float | None = None
    run_now: bool = False


class JobScheduler:
    """Interval jobs on a thread pool, one instance per job at a time by default."""

    def __init__(self, max_workers: int = 16) -> None:
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=max_workers)},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone="UTC",
        )
        self._scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)
        self._scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        self._scheduler.add_listener(self._on_error, EVENT_JOB_ERROR)
        self._scheduler.add_listener(self._on_executed, EVENT_JOB_EXECUTED)

    def add_interval(
        self,
        name: str,
        func: Callable[[], Any],
        seconds: float,
        *,
        max_instances: int = 1,
        misfire_grace_seconds: float | None = None,
        run_now: bool = False,
    ) -> None:
        """Run ``func`` every ``seconds``; a run is allowed to start late by up to
        ``misfire_grace_seconds`` (default: one interval) before it counts as missed."""
        grace = misfire_grace_seconds if misfire_grace_seconds is not None else seconds
        kwargs: dict[str, Any] = {}
        if run_now:
            kwargs["next_run_time"] = _now()
        self._scheduler.add_job(
            _timed(name, func),
            "interval",
            seconds=seconds,
            id=name,
            name=name,
            replace_existing=True,
            max_instances=max_instances,
            misfire_grace_time=max(1, round(grace)),
            **kwargs,
        )

    def add(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            self.add_interval(job.name, job.func, job.interval_seconds,
                              misfire_grace_seconds=job.misfire_grace_seconds,
                              run_now=job.run_now)

    def start(self) -> None:
        self._scheduler.start()

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running)

    def job_names(self) -> list[str]:
        return [job.id for job in self._scheduler.get_jobs()]

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)

    @staticmethod
    def _on_missed(event: JobExecutionEvent) -> None:
        metrics.JOB_MISSED.labels(event.job_id).inc()
        log.warning("job_missed", job=event.job_id)

    @staticmethod
    def _on_max_instances(event: JobSubmissionEvent) -> None:
        metrics.JOB_MAX_INSTANCES.labels(event.job_id).inc()
        log.warning("job_still_running", job=event.job_id)

    @staticmethod
    def _on_error(event: JobExecutionEvent) -> None:
        metrics.JOB_RUNS.labels(event.job_id, "error").inc()
        log.error("job_failed", job=event.job_id, error=repr(event.exception))

    @staticmethod
    def _on_executed(event: JobExecutionEvent) -> None:
        metrics.JOB_RUNS.labels(event.job_id, "success").inc()


def _timed(name: str, func: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        started = time.monotonic()
        try:
            return func()
        finally:
            metrics.JOB_DURATION.labels(name).observe(time.monotonic() - started)

    run.__name__ = f"job_{name}"
    return run


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
