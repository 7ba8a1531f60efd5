"""One simulation run by every live replica sharing a PostgreSQL ledger.

The ledger is the only means of agreement (no coordinator of our own): each replica
renews its ``replica:<instance id>`` lease every heartbeat (``ledger.leases``), and
a poller thread (``Fleet``, every ``POLL_SECONDS``) reads the fleet tables
(``ledger.fleet_store``):

- a simulation posted to any replica is a ``twin_fleet_runs`` row with a common
  start slightly in the future when others are live; the others discover it on
  their next poll and add their share to their own sender;
- the share is claimed block by block just ahead of time (``fleet_plan``): block
  ``b`` preferably by the live replica of rank ``b % n``, by anyone when it is
  about due; each claimed block becomes a ``Run`` of exactly its indices at their
  offsets from the common start, so the fleet sends the requested profile;
- a replica whose lease expired has its blocks not done taken over (the payments
  it had already sent are found in the ledger by their intended send time), and
  its unfinished payments moved to one live replica (``FleetStore.take_payments``)
  which follows them (``on_payments``);
- ``DELETE`` on any replica ends the row's ``running`` state; every replica stops
  its share when it sees that. A simulation is finished when every block is done
  (a block is done once every payment of it is stored) and every payment of it has
  a counted outcome, whichever replica sees it first;
- each replica writes its share's figures (dispatched, dropped, sent) as they
  change; ``figures`` puts the fleet's view together from the ledger, the same on
  every replica.

A lone replica is a fleet of one: it claims every block itself, from now.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from bgmock_twin.logs import get_logger
from bgmock_twin.settings.fleet import FleetSettings
from bgmock_twin.tracking import fleet_plan as plan
from bgmock_twin.tracking import pacing
from bgmock_twin.tracking.clock import Clock
from bgmock_twin.tracking.ledger import LedgerUnavailable
from bgmock_twin.tracking.ledger.fleet_store import FleetRun, FleetStore, ShareRow
from bgmock_twin.tracking.ledger.leases import Leases, replica_lease
from bgmock_twin.tracking.load import Run
from bgmock_twin.tracking.simulation_spec import SimulationSpec
from bgmock_twin.workers import Worker

log = get_logger(__name__)

POLL_SECONDS = 0.25
FIGURES_SECONDS = 1.0
ENDED = ("stopped", "finished")


class RunSink(Protocol):
    """What the fleet needs of the sender."""

    def add_run(self, run: Run, start_mono: float | None = None,
                start_utc: datetime | None = None) -> None: ...

    def stop_run(self, run: Run) -> None: ...


class WrittenSeq(Protocol):
    """What the fleet needs of the ledger: the sequence number of the last write, and
    up to which one everything is stored (``LedgerStore.last_seq``/``durable_seq``)."""

    @property
    def last_seq(self) -> int: ...

    @property
    def durable_seq(self) -> int: ...


class Members(Protocol):
    """What the fleet tells the simulations: one found in the ledger, one ended."""

    def adopt(self, run: FleetRun, spec: SimulationSpec) -> None: ...

    def ended(self, simulation_id: str, state: str, finished_at: datetime | None) -> None: ...


@dataclass(frozen=True, slots=True)
class Share:
    """One replica's part of a fleet simulation, as it last wrote it."""

    instance_id: str
    dispatched: int
    dropped: int
    sent: int
    live: bool
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FleetFigures:
    dispatched: int  # payments recorded in the ledger, by every replica
    dropped: int  # the replicas' drops (never in the ledger)
    unfinished: int  # recorded with no counted outcome yet
    outcomes: dict[str, int]  # counted outcome -> payments, read with the two above
    sending_seconds: float | None
    shares: tuple[Share, ...]


@dataclass
class FleetSim:
    """This replica's state of one fleet simulation."""

    run: FleetRun
    spec: SimulationSpec
    offsets: list[float]
    first_offsets: list[float]
    start_mono: float
    window_seconds: float
    state: str = "running"
    runs: list[Run] = field(default_factory=list)
    scheduled: set[int] = field(default_factory=set)
    written: tuple[int, int, int] | None = None
    figures: FleetFigures | None = None

    @property
    def simulation_id(self) -> str:
        return self.run.simulation_id

    def local(self) -> tuple[int, int, int]:
        """(dispatched, dropped, sent) of this replica's runs."""
        return (sum(r.dispatched for r in self.runs), sum(r.dropped for r in self.runs),
                sum(r.sent for r in self.runs))

    def lags(self) -> tuple[list[float], float]:
        values = [lag for r in self.runs for lag in r.lags]
        return values, max((r.lag_max for r in self.runs), default=0.0)


class Fleet(Worker):
    def __init__(self, store: FleetStore, leases: Leases, sender: RunSink,
                 ledger: WrittenSeq, settings: FleetSettings, clock: Clock, *,
                 on_payments: Callable[[list[dict[str, Any]]], None],
                 ready: Callable[[], bool]) -> None:
        super().__init__("fleet", error_event="fleet_poll_failed")
        self.store = store
        self.leases = leases
        self.me = store.holder
        self.sender = sender
        self.ledger = ledger
        self.settings = settings
        self.clock = clock
        self.on_payments = on_payments
        self.ready = ready
        self.members: Members | None = None
        # what to tell ``members``, told once the fleet's lock is released (the
        # simulations call the fleet under their own lock: one order of locks only)
        self._news: deque[Callable[[Members], None]] = deque()
        self._lock = threading.RLock()
        self._sims: dict[str, FleetSim] = {}
        self._live: list[str] = []
        # blocks sent, with the ledger's last write when their run ended (every row
        # of its payments is at or below it), stored as done once the ledger has
        # stored up to it (``_mark_done``)
        self._done: deque[tuple[str, list[int], int]] = deque()
        self._next_beat = 0.0
        self._next_figures = 0.0
        self._unavailable: str | None = None

    # --- the poller --------------------------------------------------------------------------
    def step(self) -> None:
        if self.wait(POLL_SECONDS):
            return
        try:
            self.tick()
        except LedgerUnavailable as exc:
            self._tell()
            if str(exc) != self._unavailable:
                log.warning("fleet_ledger_unavailable", error=str(exc))
            self._unavailable = str(exc)
            return
        self._unavailable = None

    def tick(self) -> None:
        """One poll: heartbeat and take-overs when due, then every running simulation."""
        mono, now = self.clock.monotonic(), self.clock.now()
        with self._lock:
            if self._beat(mono) and self.ready():
                self._take_over_replicas(now)
            self._live = [lease.holder for lease in self.leases.live()]
            self._mark_done(now)
            running = self.store.runs(["running"])
            for row in running:
                sim = self._sims.get(row.simulation_id) or self._adopt(row)
                if sim is not None and sim.state == "running":
                    self._share_out(sim, now)
            still = {row.simulation_id for row in running}
            for sim in list(self._sims.values()):
                if sim.state == "running" and sim.simulation_id not in still:
                    ended = self.store.run(sim.simulation_id)
                    self._end_here(sim, ended.state if ended else "stopped",
                                   ended.finished_at if ended else now)
                self._write_share(sim, now)
            if mono >= self._next_figures:
                self._next_figures = mono + FIGURES_SECONDS
                for sim in self._sims.values():
                    if sim.state == "running":
                        self._check_finished(sim, now)
        self._tell()

    def leave(self) -> None:
        """The last words of a replica stopping (after its ledger rows are stored):
        its lease ends now, so the others take over its blocks not sent and its
        payments in flight at once (a replica scaled away leaves none behind; one
        restarted under its name simply starts afresh)."""
        try:
            self.store.expire_lease(replica_lease(self.me), self.clock.now())
        except LedgerUnavailable as exc:  # the lease then expires by itself
            log.warning("fleet_lease_not_ended", error=str(exc))
        self.store.engine.dispose()

    # --- membership --------------------------------------------------------------------------
    def _beat(self, mono: float) -> bool:
        """Renew this replica's lease when due (under the lock); whether it did."""
        if mono < self._next_beat:
            return False
        self.leases.acquire(replica_lease(self.me), self.settings.fleet_lease_seconds)
        self._next_beat = mono + self.settings.fleet_heartbeat_seconds
        return True

    def _take_over_replicas(self, now: datetime) -> None:
        """Move the unfinished payments of every replica whose lease expired here."""
        for lease in self.leases.expired():
            if lease.holder == self.me:
                continue
            rows = self.store.take_payments(lease.holder)
            if rows:
                self.on_payments(rows)
            self.store.forget_replica(lease.name, now)
            log.info("fleet_replica_gone", replica=lease.holder, payments_taken=len(rows))

    # --- simulations -------------------------------------------------------------------------
    def create(self, simulation_id: str, spec: SimulationSpec, created_at: datetime) -> None:
        """Start a simulation for the fleet: its row, then this replica's first blocks
        at once (the others join on their next poll). Its lease first, if the poller
        has not written it yet: blocks held by a replica without a live lease are
        taken over by the others (seen: a simulation posted just after start was
        sent twice, 50 payments for 30)."""
        with self._lock:
            self._beat(self.clock.monotonic())
        others = [lease.holder for lease in self.leases.live() if lease.holder != self.me]
        lead = self.settings.fleet_join_seconds if others else 0.0
        row = FleetRun(simulation_id=simulation_id, creator=self.me, spec=spec.to_json(),
                       planned=spec.count, block_size=plan.BLOCK_SIZE, state="running",
                       created_at=created_at, starts_at=created_at + timedelta(seconds=lead),
                       finished_at=None)
        self.store.create(row)
        with self._lock:
            self._live = [lease.holder for lease in self.leases.live()]
            sim = self._sims.get(simulation_id) or self._adopt(row, announce=False)
            if sim is not None:
                self._share_out(sim, self.clock.now())
        self._tell()
        log.info("fleet_simulation_created", simulation=simulation_id, replicas=len(others) + 1,
                 starts_in=lead)

    def _adopt(self, row: FleetRun, announce: bool = True) -> FleetSim | None:
        try:
            spec = SimulationSpec.from_json(row.spec)
            segments = spec.rate_profile()
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("fleet_simulation_unreadable", simulation=row.simulation_id,
                        error=repr(exc))
            return None
        offsets = [] if row.state in ENDED else list(pacing.offsets(segments, row.planned))
        firsts = [offsets[b * row.block_size]
                  for b in range(plan.block_count(row.planned, row.block_size))] if offsets else []
        start_mono = self.clock.monotonic() + (row.starts_at - self.clock.now()).total_seconds()
        sim = FleetSim(row, spec, offsets, firsts, start_mono,
                       pacing.window_for(segments, row.planned), state=row.state)
        self._sims[row.simulation_id] = sim
        if announce:
            self._news.append(lambda members: members.adopt(row, spec))
        return sim

    def _share_out(self, sim: FleetSim, now: datetime) -> None:
        """Claim and schedule this replica's blocks of ``sim`` due soon, and take over
        those of replicas gone."""
        sid = sim.simulation_id
        blocks = self.store.blocks(sid)
        elapsed = (now - sim.run.starts_at).total_seconds()
        rank, n = plan.rank_of(self.me, self._live)
        # held here but not sent by this process: it restarted under the same name
        resumed = [b for b, s in blocks.items()
                   if s.holder == self.me and not s.done and b not in sim.scheduled]
        taken = [b for b, holder in plan.to_take_over(sim.first_offsets, elapsed, blocks,
                                                      self._live, self.me, rank, n)
                 if self.store.take(sid, b, holder, now)]
        if taken:
            log.info("fleet_blocks_taken_over", simulation=sid, blocks=len(taken))
        if resumed or taken:
            self._schedule(sim, sorted(resumed + taken), look_up=True)
        wanted = plan.to_claim(sim.first_offsets, elapsed, blocks, rank, n)
        claimed = self.store.claim(sid, wanted, now)
        if claimed:
            self._schedule(sim, claimed, look_up=False)

    def _schedule(self, sim: FleetSim, blocks: list[int], look_up: bool) -> None:
        """Hand the sender a run of the blocks' indices (minus those already sent)."""
        planned, size = sim.run.planned, sim.run.block_size
        sent: list[int] = []
        if look_up:
            first = blocks[0] * size
            last = min(planned, (blocks[-1] + 1) * size) - 1
            start = sim.run.starts_at
            margin = timedelta(milliseconds=1)
            times = self.store.intended_times(
                sim.simulation_id, start + timedelta(seconds=sim.offsets[first]) - margin,
                start + timedelta(seconds=sim.offsets[last]) + margin)
            sent = [plan.index_at(sim.offsets, (t - start).total_seconds()) for t in times]
        indices = plan.unsent(blocks, planned, sent, size)
        sim.scheduled.update(blocks)
        if not indices:
            self._done.append((sim.simulation_id, blocks, 0))
            return
        run = Run(profile=sim.spec.load_profile(),
                  offsets=iter([sim.offsets[i] for i in indices]), planned=len(indices),
                  simulation_id=sim.simulation_id, indices=iter(indices),
                  on_done=lambda r: self._run_done(sim.simulation_id, blocks, r))
        sim.runs.append(run)
        self.sender.add_run(run, start_mono=sim.start_mono, start_utc=sim.run.starts_at)

    def _run_done(self, simulation_id: str, blocks: list[int], run: Run) -> None:
        """On the sender's thread: every payment of a run went (a stopped one, by a
        DELETE or a shutdown, leaves its blocks to be taken over). Stored by the poller
        once their rows are (the sender registers a payment before it sends it)."""
        if not run.stopped:
            self._done.append((simulation_id, blocks, self.ledger.last_seq))

    def _mark_done(self, now: datetime) -> None:
        """Store the blocks done whose payments' rows the ledger has stored (its write-
        behind buffer may still hold them when the run ends): a block done before
        then would let a simulation whose other payments are all counted be finished
        while that block's rows are not recorded yet, and the rows then arrive with
        no outcome in a finished simulation (seen with a taken-over block, sent in one
        burst long after the rest)."""
        durable = self.ledger.durable_seq
        waiting: list[tuple[str, list[int], int]] = []
        try:
            while self._done:
                simulation_id, blocks, written = self._done[0]
                if written > durable:
                    waiting.append(self._done.popleft())
                    continue
                self.store.mark_done(simulation_id, blocks, now)
                self._done.popleft()
        finally:
            self._done.extendleft(reversed(waiting))

    def _write_share(self, sim: FleetSim, now: datetime) -> None:
        figures = sim.local()
        if sim.runs and figures != sim.written:
            self.store.write_share(sim.simulation_id, *figures, now)
            sim.written = figures

    def _check_finished(self, sim: FleetSim, now: datetime) -> None:
        # the blocks first: a block is done once its rows are stored (``_mark_done``),
        # so the counts read after hold every row of the blocks seen done
        blocks = self.store.blocks(sim.simulation_id)
        sim.figures = self._figures(sim)
        if plan.finished(blocks, sim.run.planned, sim.run.block_size) and \
                sim.figures.unfinished == 0 and not self._done:
            if self.store.end(sim.simulation_id, "finished", now):
                log.info("fleet_simulation_finished", simulation=sim.simulation_id)
            ended = self.store.run(sim.simulation_id)
            if ended is not None and ended.state in ENDED:
                self._end_here(sim, ended.state, ended.finished_at)

    def _end_here(self, sim: FleetSim, state: str, finished_at: datetime | None) -> None:
        if state == "stopped":
            for run in sim.runs:
                self.sender.stop_run(run)
        sim.state = state
        sim.figures = self._figures(sim)
        sim.offsets, sim.first_offsets = [], []  # up to 100,000 of them: not kept
        sid = sim.simulation_id
        self._news.append(lambda members: members.ended(sid, state, finished_at))

    def _tell(self) -> None:
        """Pass the news on, outside the fleet's lock."""
        while self._news:
            news = self._news.popleft()
            if self.members is not None:
                news(self.members)

    def stop_simulation(self, simulation_id: str) -> None:
        """Stop a simulation everywhere (``DELETE``): its row, and this replica's runs
        at once; the others see it on their next poll."""
        now = self.clock.now()
        self.store.end(simulation_id, "stopped", now)
        with self._lock:
            sim = self._sims.get(simulation_id)
            ended = self.store.run(simulation_id)
            if sim is not None and ended is not None:
                self._end_here(sim, ended.state, ended.finished_at)
        self._tell()

    def discover(self, simulation_id: str) -> bool:
        """Look for a simulation in the ledger before the next poll would (a ``GET``
        right after a ``POST`` to another replica): True if the fleet has it now."""
        row = self.store.run(simulation_id)
        if row is None:
            return False
        with self._lock:
            if simulation_id not in self._sims:
                self._adopt(row)
                if row.state in ENDED:
                    self._news.append(lambda members: members.ended(
                        row.simulation_id, row.state, row.finished_at))
        self._tell()
        return True

    # --- views -------------------------------------------------------------------------------
    def state_of(self, simulation_id: str) -> str | None:
        """The state of a fleet simulation in the ledger (None: not the fleet's)."""
        row = self.store.run(simulation_id)
        return row.state if row is not None else None

    def knows(self, simulation_id: str) -> bool:
        with self._lock:
            return simulation_id in self._sims

    def sim(self, simulation_id: str) -> FleetSim | None:
        with self._lock:
            return self._sims.get(simulation_id)

    def cached_figures(self, simulation_id: str) -> FleetFigures | None:
        with self._lock:
            sim = self._sims.get(simulation_id)
            return sim.figures if sim is not None else None

    def figures(self, simulation_id: str) -> FleetFigures | None:
        """The fleet's figures of a simulation, fresh from the ledger."""
        with self._lock:
            sim = self._sims.get(simulation_id)
        if sim is None and self.discover(simulation_id):  # ended before this replica started
            with self._lock:
                sim = self._sims.get(simulation_id)
        if sim is None:
            return None
        figures = self._figures(sim)
        sim.figures = figures
        return figures

    def _figures(self, sim: FleetSim) -> FleetFigures:
        counts = self.store.counts(sim.simulation_id)
        rows: list[ShareRow] = self.store.shares(sim.simulation_id)
        live = set(self._live) | {self.me}
        shares = tuple(Share(r.instance_id, r.dispatched, r.dropped, r.sent,
                             r.instance_id in live, r.updated_at) for r in rows)
        row = self.store.run(sim.simulation_id)
        end = self.clock.now()
        if row is not None and row.state in ENDED:
            end = self.store.last_done(sim.simulation_id) or row.finished_at or end
        sending = (end - sim.run.starts_at).total_seconds()
        seconds: float | None = sending if sending > 0 else None
        if seconds is not None and row is not None and row.state == "finished":
            seconds = max(seconds, sim.window_seconds)  # the profile's time, as one replica
        return FleetFigures(dispatched=counts.recorded,
                            dropped=sum(s.dropped for s in shares),
                            unfinished=counts.unfinished, outcomes=counts.outcomes,
                            sending_seconds=seconds, shares=shares)

