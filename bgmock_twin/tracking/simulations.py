"""Simulations: named runs of N payments on a load profile, started over the API.

A run is sized by a count, or by a duration: then it is the payments its profile
has due within that time (``pacing.count_for_duration``), fixed when it starts.
Its achieved rate is payments dispatched per second of sending, the sending time
being the profile's window for them (or longer, when the pacer fell behind).

A simulation is *running* while payments are still due or any sent payment has no
counted outcome yet; it becomes *finished* when every payment is accounted for
(dispatched = sent, each with an outcome, or dropped), or *stopped* when deleted.
Its spec and progress are kept in the ledger, so a restarted twin lists it and
resumes sending the payments that were not yet due (re-based on the new start,
continuing the same mix), while the tracker resumes following the ones in flight.
Latency percentiles are computed from the simulation's own step durations in the
ledger (nearest rank), and its send lag from what the pacer measured.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from bgmock_twin import metrics
from bgmock_twin.errors import Conflict, NotFound
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking import pacing
from bgmock_twin.tracking.fleet import Fleet, FleetFigures, Share
from bgmock_twin.tracking.ledger import Ledger, LedgerUnavailable
from bgmock_twin.tracking.ledger.fleet_store import FleetRun
from bgmock_twin.tracking.lifecycle import ALL_STEPS, Channel, Outcome
from bgmock_twin.tracking.load import Run
from bgmock_twin.tracking.sender import Sender
from bgmock_twin.tracking.simulation_report import (
    Latency,
    Percentiles,
    Progress,
    Results,
    results,
    summarize,
)
from bgmock_twin.tracking.simulation_spec import (
    InvalidSimulation,
    SimulationSpec,
)
from bgmock_twin.tracking.tracker import Tracker

log = get_logger(__name__)

MAX_ACTIVE = 20
MAX_DURATION_SECONDS = 7 * 86_400.0  # every simulation ends within a week
CREATED_STORED_SECONDS = 2.0  # the longest a 202 waits for its simulation's row
MAX_KEPT = 500


@dataclass
class Simulation:
    simulation_id: str
    spec: SimulationSpec
    instance_id: str
    created_at: datetime
    state: str = "running"
    finished_at: datetime | None = None
    run: Run | None = None
    dispatched_before: int = 0
    dropped_before: int = 0
    expected_seconds: float = 0.0
    resumed: bool = False
    window_seconds: float = 0.0  # the profile's time for the current run's payments
    fleet: bool = False  # run by every live replica (``tracking.fleet``)

    def sending_seconds(self, now_mono: float) -> float | None:
        """How long the current run has been sending (None without a run here)."""
        run = self.run
        if run is None or run.start_mono == 0.0:
            return None
        if run.ended_mono is None:
            return now_mono - run.start_mono
        took = run.ended_mono - run.start_mono
        return took if run.stopped else max(took, self.window_seconds)

    def run_dispatched(self) -> int:
        return self.run.dispatched if self.run else 0

    @property
    def dispatched(self) -> int:
        return self.dispatched_before + (self.run.dispatched if self.run else 0)

    @property
    def dropped(self) -> int:
        return self.dropped_before + (self.run.dropped if self.run else 0)

    @property
    def sending(self) -> bool:
        return self.run is not None and not self.run.done.is_set()

    def row(self, now: datetime) -> dict[str, Any]:
        return {
            "simulation_id": self.simulation_id, "instance_id": self.instance_id,
            "spec": self.spec.to_json(), "state": self.state, "planned": self.spec.count,
            "dispatched": self.dispatched, "dropped": self.dropped,
            "created_at": self.created_at, "finished_at": self.finished_at, "updated_at": now,
        }


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    simulation_id: str
    name: str | None
    state: str  # running, resuming, finished or stopped
    created_at: datetime
    finished_at: datetime | None
    planned: int
    dispatched: int
    dropped: int
    unfinished: int
    channel: Channel
    profile: str
    duration_seconds: float | None  # the duration asked for, if sized by one
    achieved_rate: float | None  # payments dispatched per second of sending (this run)


@dataclass(frozen=True, slots=True)
class SimulationDetail:
    summary: SimulationSummary
    spec: SimulationSpec
    expected_duration_seconds: float
    resumed: bool
    progress: Progress
    outcomes: dict[str, int]  # counted outcome -> payments
    current_status: dict[str, int]  # status in the ledger -> payments
    latency: Latency
    send_lag: Percentiles  # actual minus intended send time, with its max (this replica)
    results: Results  # the threshold-ready figures
    shares: tuple[Share, ...]  # each replica's part (this one alone outside a fleet)


class TooManySimulations(Conflict):
    """``MAX_ACTIVE`` simulations are running already."""


class UnknownSimulation(NotFound):
    """No simulation has this id (or it was forgotten after ``MAX_KEPT`` newer ones)."""


class SimulationManager:
    def __init__(
        self, sender: Sender, tracker: Tracker, ledger: Ledger, instance_id: str,
        fleet: Fleet | None = None,
    ) -> None:
        self.sender = sender
        self.tracker = tracker
        self.ledger = ledger
        self.instance_id = instance_id
        self._lock = threading.RLock()
        self._sims: dict[str, Simulation] = {}
        self._to_resume: list[Simulation] = []
        self.fleet = fleet
        if fleet is not None:
            fleet.members = self

    # --- commands ---------------------------------------------------------------------------
    def create(self, spec: SimulationSpec) -> Simulation:
        """Start sending ``spec``; raises ``InvalidSimulation`` or ``TooManySimulations``."""
        try:
            segments = spec.rate_profile()
            expected_seconds = pacing.expected_duration(segments, spec.count)
        except ValueError as exc:
            raise InvalidSimulation(str(exc)) from None
        if not math.isfinite(expected_seconds) or expected_seconds > MAX_DURATION_SECONDS:
            # a rate just above zero would hold a slot forever
            raise InvalidSimulation(
                f"the simulation would take longer than {MAX_DURATION_SECONDS:.0f} s; "
                "raise the rate or lower the count")
        now = self.tracker.clock.now()
        with self._lock:
            if sum(1 for s in self._sims.values() if s.state == "running") >= MAX_ACTIVE:
                raise TooManySimulations(f"at most {MAX_ACTIVE} simulations run at once")
            sim = Simulation(str(uuid.uuid4()), spec, self.instance_id, now)
            sim.expected_seconds = expected_seconds
            self._sims[sim.simulation_id] = sim
            if self.fleet is None:
                self._start(sim, segments, 0)
            else:
                sim.fleet = True
                self.fleet.create(sim.simulation_id, spec, now)
                self.ledger.write("simulation", sim.row(now))
                self._gauge()
            self._trim()
        if self.ledger.available:
            # stored before the 202: a twin killed right after still knows the id it
            # gave (an unavailable ledger stores it once back; the answer does not wait)
            self.ledger.flush(CREATED_STORED_SECONDS)
        log.info("simulation_started", simulation=sim.simulation_id, count=spec.count,
                 duration=spec.duration, channel=spec.channel.value, profile=spec.profile)
        return sim

    def _start(self, sim: Simulation, segments: pacing.Profile, skip: int) -> None:
        sim.window_seconds = pacing.window_for(segments, sim.spec.count) - \
            pacing.window_for(segments, skip)
        offsets: Iterator[float] = pacing.offsets(segments, sim.spec.count)
        if skip:
            rest = itertools.islice(offsets, skip, None)
            first = next(rest, None)
            offsets = iter(()) if first is None else \
                (o - first for o in itertools.chain([first], rest))
        sim.run = Run(
            profile=sim.spec.load_profile(), offsets=offsets, planned=sim.spec.count - skip,
            simulation_id=sim.simulation_id, first_index=skip,
            seed=uuid.UUID(sim.simulation_id).int & 0xFFFFFFFF,
        )
        self.ledger.write("simulation", sim.row(self.tracker.clock.now()))
        self.sender.add_run(sim.run)
        self._gauge()

    def stop(self, simulation_id: str) -> Simulation:
        """Stop sending (payments sent are still followed); raises ``UnknownSimulation``."""
        with self._lock:
            sim = self.get(simulation_id)
            if sim.fleet and self.fleet is not None:
                self.fleet.stop_simulation(simulation_id)
            elif sim.state == "running":
                if sim.run is not None:
                    self.sender.stop_run(sim.run)
                sim.state = "stopped"
                sim.finished_at = self.tracker.clock.now()
                self.ledger.write("simulation", sim.row(sim.finished_at))
                log.info("simulation_stopped", simulation=simulation_id)
            self._gauge()
            return sim

    def refresh(self) -> None:
        """Finish simulations whose every payment is accounted for; persist progress."""
        now = self.tracker.clock.now()
        with self._lock:
            for sim in self._sims.values():
                if sim.state != "running" or sim.run is None or sim.fleet:
                    continue
                run = sim.run
                if run.done.is_set() and run.sent >= run.dispatched and \
                        self.tracker.sim_uncounted(sim.simulation_id) == 0:
                    sim.state = "finished"
                    sim.finished_at = now
                    self._log_finished(sim)
                self.ledger.write("simulation", sim.row(now))
            self._gauge()

    def _log_finished(self, sim: Simulation) -> None:
        """The finish line: the figures a threshold would be checked against."""
        figures: dict[str, Any] = {}
        try:
            self.ledger.flush(0.5)
            figures = asdict(self._results(sim, self.ledger.count_by_counted_outcome(
                sim.simulation_id)))
            total = summarize(self.ledger.durations(sim.simulation_id)["total"])
            figures.update(p95_total=total.p95, p99_total=total.p99)
        except LedgerUnavailable as exc:
            figures = {"dispatched": sim.dispatched, "dropped": sim.dropped,
                       "figures_unavailable": str(exc)}
        log.info("simulation_finished", simulation=sim.simulation_id, name=sim.spec.name,
                 planned=sim.spec.count, **figures)

    def _results(self, sim: Simulation, counted: dict[str, int]) -> Results:
        return results(
            planned=sim.spec.count, dispatched=sim.dispatched, dropped=sim.dropped,
            outcomes={o.value: counted.get(o.value, 0) for o in Outcome},
            unfinished=self.tracker.sim_uncounted(sim.simulation_id),
            sending_seconds=sim.sending_seconds(time.monotonic()),
            dispatched_in_run=sim.run_dispatched(),
        )

    def shutdown(self) -> None:
        """Persist the progress of running simulations so a restart resumes them."""
        now = self.tracker.clock.now()
        with self._lock:
            for sim in self._sims.values():
                if sim.state == "running":
                    self.ledger.write("simulation", sim.row(now))
            metrics.SIMULATIONS_ACTIVE.set(0)

    # --- restart ----------------------------------------------------------------------------
    def load(self) -> None:
        """Read simulations from the ledger; this instance's running ones are resumed by
        ``resume_pending`` once the twin's accounts are available."""
        try:
            rows = self.ledger.load_simulations()
        except LedgerUnavailable as exc:
            log.warning("simulations_not_loaded", error=str(exc))
            return
        with self._lock:
            for row in rows:
                if row["simulation_id"] in self._sims:
                    continue
                try:
                    spec = SimulationSpec.from_json(row["spec"])
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("simulation_unreadable", simulation=row["simulation_id"],
                                error=repr(exc))
                    continue
                sim = Simulation(
                    row["simulation_id"], spec, row["instance_id"], row["created_at"],
                    state=row["state"], finished_at=row["finished_at"],
                    dispatched_before=int(row["dispatched"]), dropped_before=int(row["dropped"]),
                )
                self._sims[sim.simulation_id] = sim
                fleet_state = self.fleet.state_of(sim.simulation_id) if self.fleet else None
                if fleet_state is not None:
                    sim.fleet = True  # the fleet's poller resumes this replica's share
                    sim.state = fleet_state
                elif sim.state == "running" and sim.instance_id == self.instance_id:
                    sim.state = "resuming"
                    self._to_resume.append(sim)

    def resume_pending(self) -> None:
        with self._lock:
            pending, self._to_resume = self._to_resume, []
            for sim in pending:
                try:
                    registered = self.ledger.count_by_status(sim.simulation_id)
                except LedgerUnavailable:
                    self._to_resume.append(sim)
                    continue
                sim.dispatched_before = max(sim.dispatched_before, sum(registered.values()))
                done = sim.dispatched_before + sim.dropped_before
                sim.state = "running"
                sim.resumed = True
                self._start(sim, sim.spec.rate_profile(), done)
                log.info("simulation_resumed", simulation=sim.simulation_id,
                         remaining=sim.spec.count - done)

    # --- the fleet (``Members``) --------------------------------------------------------------
    def adopt(self, run: FleetRun, spec: SimulationSpec) -> None:
        """A fleet simulation found in the ledger (posted to another replica, or
        before this one restarted): listed and shown here too."""
        with self._lock:
            sim = self._sims.get(run.simulation_id)
            if sim is None:
                sim = Simulation(run.simulation_id, spec, run.creator, run.created_at,
                                 state=run.state, finished_at=run.finished_at)
                self._sims[sim.simulation_id] = sim
                self._trim()
            sim.fleet = True
            sim.state = run.state
            with contextlib.suppress(ValueError):
                sim.expected_seconds = pacing.expected_duration(spec.rate_profile(), spec.count)
            self._gauge()

    def ended(self, simulation_id: str, state: str, finished_at: datetime | None) -> None:
        """A fleet simulation stopped or finished (here or on another replica)."""
        with self._lock:
            sim = self._sims.get(simulation_id)
            if sim is None or sim.state in ("finished", "stopped"):
                return
            sim.state, sim.finished_at = state, finished_at
            figures = self.fleet.cached_figures(simulation_id) if self.fleet else None
            if figures is not None:
                sim.dispatched_before, sim.dropped_before = figures.dispatched, figures.dropped
            self.ledger.write("simulation", sim.row(self.tracker.clock.now()))
            log.info(f"simulation_{state}", simulation=simulation_id, fleet=True,
                     dispatched=sim.dispatched, dropped=sim.dropped)
            self._gauge()

    def _fleet_figures(self, sim: Simulation, fresh: bool) -> FleetFigures | None:
        if not sim.fleet or self.fleet is None:
            return None
        figures = self.fleet.cached_figures(sim.simulation_id)
        if fresh or figures is None:
            figures = self.fleet.figures(sim.simulation_id)
        return figures

    # --- views ------------------------------------------------------------------------------
    def _gauge(self) -> None:
        metrics.SIMULATIONS_ACTIVE.set(self.active())

    def _trim(self) -> None:
        finished = [s for s in self._sims.values() if s.state in ("finished", "stopped")]
        for sim in finished[: max(0, len(finished) - MAX_KEPT)]:
            del self._sims[sim.simulation_id]

    def get_sim(self, simulation_id: str) -> Simulation | None:
        with self._lock:
            sim = self._sims.get(simulation_id)
        if sim is None and self.fleet is not None:
            try:  # posted to another replica a moment ago
                if self.fleet.discover(simulation_id):
                    with self._lock:
                        sim = self._sims.get(simulation_id)
            except LedgerUnavailable:
                return None
        return sim

    def get(self, simulation_id: str) -> Simulation:
        """The simulation, or ``UnknownSimulation``."""
        sim = self.get_sim(simulation_id)
        if sim is None:
            raise UnknownSimulation("no such simulation")
        return sim

    def active(self) -> int:
        """How many simulations are running or waiting to resume."""
        with self._lock:
            return sum(1 for s in self._sims.values() if s.state in ("running", "resuming"))

    def summaries(self) -> list[SimulationSummary]:
        with self._lock:
            sims = sorted(self._sims.values(), key=lambda s: s.created_at, reverse=True)
            return [self.summary(s) for s in sims]

    def summary(self, sim: Simulation, figures: FleetFigures | None = None,
                state: tuple[str, datetime | None] | None = None) -> SimulationSummary:
        """``figures``: a fleet simulation's (else the cached ones are read);
        ``state``: the state and end time read before the figures (else now)."""
        figures = figures or self._fleet_figures(sim, fresh=False)
        state_now, finished_at = state or (sim.state, sim.finished_at)
        if figures is not None:
            sending = figures.sending_seconds
            dispatched, dropped, unfinished = \
                figures.dispatched, figures.dropped, figures.unfinished
            achieved = round(dispatched / sending, 3) if sending else None
        else:
            sending = sim.sending_seconds(time.monotonic())
            dispatched, dropped = sim.dispatched, sim.dropped
            unfinished = self.tracker.sim_uncounted(sim.simulation_id)
            achieved = round(sim.run_dispatched() / sending, 3) if sending else None
        return SimulationSummary(
            simulation_id=sim.simulation_id, name=sim.spec.name, state=state_now,
            created_at=sim.created_at, finished_at=finished_at, planned=sim.spec.count,
            dispatched=dispatched, dropped=dropped, unfinished=unfinished,
            channel=sim.spec.channel, profile=sim.spec.profile,
            duration_seconds=sim.spec.duration, achieved_rate=achieved,
        )

    def detail(self, sim: Simulation) -> SimulationDetail:
        """The summary with progress, outcomes and latency from the ledger; raises
        ``LedgerUnavailable`` when the ledger cannot be read.

        The state is read first and a fleet simulation's outcomes with its counts in
        one statement (``FleetStore.counts``): a simulation finishes only once every
        payment of it is counted, so a detail saying "finished" has outcomes summing
        to dispatched. (Outcomes read before the state could miss the last payments,
        counted and the simulation finished while the detail was being read.)"""
        state = (sim.state, sim.finished_at)
        self.ledger.flush(0.5)
        figures = self._fleet_figures(sim, fresh=True)
        counted = figures.outcomes if figures is not None else \
            self.ledger.count_by_counted_outcome(sim.simulation_id)
        statuses = self.ledger.count_by_status(sim.simulation_id)
        durations = self.ledger.durations(sim.simulation_id)
        summary = self.summary(sim, figures, state)
        return SimulationDetail(
            summary=summary,
            spec=sim.spec,
            expected_duration_seconds=round(sim.expected_seconds, 3),
            resumed=sim.resumed,
            progress=Progress(
                planned=sim.spec.count,
                dispatched=summary.dispatched,
                dropped=summary.dropped,
                not_yet_due=max(0, sim.spec.count - summary.dispatched - summary.dropped)
                if summary.state == "running" else 0,
                recorded=sum(statuses.values()),
                in_flight=statuses.get("in_flight", 0),
                finished=sum(statuses.get(o.value, 0) for o in Outcome if o is not Outcome.STUCK),
                stuck_now=statuses.get("stuck", 0),
            ),
            outcomes={o.value: counted.get(o.value, 0) for o in Outcome},
            current_status={k: statuses.get(k, 0) for k in
                            ("in_flight", "success", "failed", "rejected", "stuck")},
            latency=Latency(
                total=summarize(durations["total"]),
                steps={s.value: summarize(durations[s.value]) for s in ALL_STEPS},
            ),
            send_lag=self._send_lag(sim),
            results=self._results(sim, counted) if figures is None else results(
                planned=sim.spec.count, dispatched=figures.dispatched, dropped=figures.dropped,
                outcomes={o.value: counted.get(o.value, 0) for o in Outcome},
                unfinished=figures.unfinished, sending_seconds=figures.sending_seconds),
            shares=figures.shares if figures is not None else self._own_share(sim),
        )

    def _send_lag(self, sim: Simulation) -> Percentiles:
        """The send lag this replica measured (its share, for a fleet simulation)."""
        local = self.fleet.sim(sim.simulation_id) if sim.fleet and self.fleet else None
        if local is not None:
            lags, lag_max = local.lags()
            return summarize(lags, round(lag_max, 6))
        run = sim.run
        return summarize(run.lags, round(run.lag_max, 6)) if run else summarize([])

    def _own_share(self, sim: Simulation) -> tuple[Share, ...]:
        run = sim.run
        return (Share(self.instance_id, sim.dispatched, sim.dropped,
                      (run.sent if run else 0) + sim.dispatched_before, True,
                      self.tracker.clock.now()),)
