"""Simulations: named runs of N payments on a load profile, started over the API.

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

import itertools
import json
import math
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from bgmock_twin import metrics
from bgmock_twin.errors import Conflict, InvalidRequest, NotFound
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking import mix, pacing
from bgmock_twin.tracking.ledger import Ledger, LedgerUnavailable
from bgmock_twin.tracking.lifecycle import ALL_STEPS, FAILURE_KINDS, Channel, Kind, Outcome
from bgmock_twin.tracking.load import LoadProfile, Run
from bgmock_twin.tracking.sender import Sender
from bgmock_twin.tracking.simulation_report import Latency, Percentiles, Progress, summarize
from bgmock_twin.tracking.tracker import Tracker

log = get_logger(__name__)

Profile = Literal["constant", "ramp", "spike"]
MAX_ACTIVE = 20
MAX_DURATION_SECONDS = 7 * 86_400.0  # every simulation ends within a week
MAX_KEPT = 500


@dataclass(frozen=True, slots=True)
class SimulationSpec:
    count: int
    amount_min: Decimal
    amount_max: Decimal
    profile: Profile = "constant"
    rate: float | None = None
    delay: float | None = None
    ramp_from: float | None = None
    ramp_to: float | None = None
    ramp_duration: float | None = None
    spike_rate: float | None = None
    spike_start: float | None = None
    spike_duration: float | None = None
    channel: Channel = Channel.REST
    direction: mix.Direction = "both"
    failure_share: float = 0.0
    failure_kinds: tuple[Kind, ...] = FAILURE_KINDS
    name: str | None = None

    def segments(self) -> list[pacing.Segment]:
        """The rate profile; raises ``ValueError`` if the parameters do not fit it."""
        if self.profile == "ramp":
            if self.ramp_from is None or self.ramp_to is None or self.ramp_duration is None:
                raise ValueError("a ramp needs ramp_from, ramp_to and ramp_duration")
            return pacing.ramp(self.ramp_from, self.ramp_to, self.ramp_duration)
        base = self.base_rate()
        if self.profile == "spike":
            if self.spike_rate is None or self.spike_start is None or \
                    self.spike_duration is None:
                raise ValueError("a spike needs spike_rate, spike_start and spike_duration")
            return pacing.spike(base, self.spike_rate, self.spike_start, self.spike_duration)
        return pacing.constant(base)

    def base_rate(self) -> float:
        if (self.rate is None) == (self.delay is None):
            raise ValueError("give exactly one of rate (payments/s) and delay (seconds)")
        return self.rate if self.rate is not None else 1 / float(self.delay or 1)

    def load_profile(self) -> LoadProfile:
        return LoadProfile(
            amount_min=self.amount_min, amount_max=self.amount_max, channel=self.channel,
            direction=self.direction, failure_share=self.failure_share,
            failure_kinds=self.failure_kinds,
        )

    def to_json(self) -> str:
        data = asdict(self)
        data["amount_min"] = format(self.amount_min, "f")
        data["amount_max"] = format(self.amount_max, "f")
        data["channel"] = self.channel.value
        data["failure_kinds"] = [k.value for k in self.failure_kinds]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> SimulationSpec:
        data = json.loads(text)
        data["amount_min"] = Decimal(data["amount_min"])
        data["amount_max"] = Decimal(data["amount_max"])
        data["channel"] = Channel(data["channel"])
        data["failure_kinds"] = tuple(Kind(k) for k in data["failure_kinds"])
        return cls(**data)

    def fields(self) -> dict[str, Any]:
        """The fields that are set, as JSON values (money as strings)."""
        data: dict[str, Any] = json.loads(self.to_json())
        return {k: v for k, v in data.items() if v is not None}


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
    send_lag: Percentiles  # actual minus intended send time, with its max


class TooManySimulations(Conflict):
    """``MAX_ACTIVE`` simulations are running already."""


class UnknownSimulation(NotFound):
    """No simulation has this id (or it was forgotten after ``MAX_KEPT`` newer ones)."""


class InvalidSimulation(InvalidRequest):
    """A spec whose rates and durations do not make a load profile."""


class SimulationManager:
    def __init__(
        self, sender: Sender, tracker: Tracker, ledger: Ledger, instance_id: str,
    ) -> None:
        self.sender = sender
        self.tracker = tracker
        self.ledger = ledger
        self.instance_id = instance_id
        self._lock = threading.RLock()
        self._sims: dict[str, Simulation] = {}
        self._to_resume: list[Simulation] = []

    # --- commands ---------------------------------------------------------------------------
    def create(self, spec: SimulationSpec) -> Simulation:
        """Start sending ``spec``; raises ``InvalidSimulation`` or ``TooManySimulations``."""
        try:
            segments = spec.segments()
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
            self._start(sim, segments, 0)
            self._trim()
        log.info("simulation_started", simulation=sim.simulation_id, count=spec.count,
                 channel=spec.channel.value, profile=spec.profile)
        return sim

    def _start(self, sim: Simulation, segments: Sequence[pacing.Segment], skip: int) -> None:
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
            if sim.state == "running":
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
                if sim.state != "running" or sim.run is None:
                    continue
                run = sim.run
                if run.done.is_set() and run.sent >= run.dispatched and \
                        self.tracker.sim_uncounted(sim.simulation_id) == 0:
                    sim.state = "finished"
                    sim.finished_at = now
                    log.info("simulation_finished", simulation=sim.simulation_id,
                             dispatched=sim.dispatched, dropped=sim.dropped)
                self.ledger.write("simulation", sim.row(now))
            self._gauge()

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
                if sim.state == "running" and sim.instance_id == self.instance_id:
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
                self._start(sim, sim.spec.segments(), done)
                log.info("simulation_resumed", simulation=sim.simulation_id,
                         remaining=sim.spec.count - done)

    # --- views ------------------------------------------------------------------------------
    def _gauge(self) -> None:
        metrics.SIMULATIONS_ACTIVE.set(self.active())

    def _trim(self) -> None:
        finished = [s for s in self._sims.values() if s.state in ("finished", "stopped")]
        for sim in finished[: max(0, len(finished) - MAX_KEPT)]:
            del self._sims[sim.simulation_id]

    def get_sim(self, simulation_id: str) -> Simulation | None:
        with self._lock:
            return self._sims.get(simulation_id)

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

    def summary(self, sim: Simulation) -> SimulationSummary:
        return SimulationSummary(
            simulation_id=sim.simulation_id, name=sim.spec.name, state=sim.state,
            created_at=sim.created_at, finished_at=sim.finished_at, planned=sim.spec.count,
            dispatched=sim.dispatched, dropped=sim.dropped,
            unfinished=self.tracker.sim_uncounted(sim.simulation_id),
            channel=sim.spec.channel, profile=sim.spec.profile,
        )

    def detail(self, sim: Simulation) -> SimulationDetail:
        """The summary with progress, outcomes and latency from the ledger; raises
        ``LedgerUnavailable`` when the ledger cannot be read."""
        self.ledger.flush(0.5)
        counted = self.ledger.count_by_counted_outcome(sim.simulation_id)
        statuses = self.ledger.count_by_status(sim.simulation_id)
        durations = self.ledger.durations(sim.simulation_id)
        run = sim.run
        return SimulationDetail(
            summary=self.summary(sim),
            spec=sim.spec,
            expected_duration_seconds=round(sim.expected_seconds, 3),
            resumed=sim.resumed,
            progress=Progress(
                planned=sim.spec.count,
                dispatched=sim.dispatched,
                dropped=sim.dropped,
                not_yet_due=max(0, sim.spec.count - sim.dispatched - sim.dropped)
                if sim.state == "running" else 0,
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
            send_lag=summarize(run.lags, round(run.lag_max, 6)) if run else summarize([]),
        )
