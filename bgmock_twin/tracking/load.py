"""What a run of synthetic payments is: its profile (amounts, channel, direction,
failure share), its schedule and progress (``Run``), and how one payment of it is
built from the twin's fixtures (``build_payment``). The ``Sender`` sends them.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from bgmock_twin.errors import Unavailable
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking import mix
from bgmock_twin.tracking.drops import DropBursts, DropLine
from bgmock_twin.tracking.lifecycle import FAILURE_KINDS, Channel, Kind, Payment, Route
from bgmock_twin.tracking.provisioning import Fixtures, Payee

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """What the payments of a run look like."""

    amount_min: Decimal
    amount_max: Decimal
    channel: Channel = Channel.REST
    direction: mix.Direction = "both"
    failure_share: float = 0.0
    failure_kinds: tuple[Kind, ...] = FAILURE_KINDS

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return mix.usable_kinds(self.channel, self.failure_kinds)


class FixturesUnavailable(Unavailable):
    """The twin's accounts are not provisioned (BGMock unreachable so far)."""


def build_payment(
    fixtures: Fixtures,
    route: Route,
    kind: Kind,
    channel: Channel,
    amount: Decimal,
    rng: random.Random,
    intended_at: datetime,
    intended_mono: float,
    simulation_id: str | None,
    instance_id: str,
    from_account: str | None = None,
    to_account: str | None = None,
) -> Payment:
    """Pick accounts for a payment of this kind from the twin's fixtures."""
    source, destination = route.source.clearing_number, route.destination.clearing_number
    payers = fixtures.payers.get(source) or []
    payees = fixtures.payees.get(destination) or []
    if not payers or not payees:
        raise FixturesUnavailable(f"no twin accounts at clearing {source}/{destination}")
    payer = from_account or rng.choice(payers)
    payee = _payee(payees, to_account) if to_account else rng.choice(payees)
    to_bankgood, to_clearing, to_account_number = payee.bankgood_number, destination, \
        payee.account_number
    if kind is Kind.INSUFFICIENT_FUNDS:
        low = fixtures.low_accounts.get(source)
        if low is None:
            raise FixturesUnavailable("no low-balance account")
        payer = low
        amount = amount + fixtures.low_available.get(source, Decimal("0"))
    elif kind is Kind.UNKNOWN_BANKGOOD:
        if fixtures.unknown_bankgood is None:
            raise FixturesUnavailable("no unregistered bankgood number")
        to_bankgood, to_clearing, to_account_number = fixtures.unknown_bankgood, "", ""
    elif kind is Kind.UNKNOWN_PAYEE_ACCOUNT:
        ghost = fixtures.ghost_payees.get(destination)
        if ghost is None:
            raise FixturesUnavailable("no ghost payee")
        to_bankgood, to_account_number = ghost.bankgood_number, ghost.account_number
    return Payment(
        payment_id=str(uuid.uuid4()), channel=channel, route=route, kind=kind,
        from_clearing=source, from_account=payer, to_bankgood=to_bankgood,
        to_clearing=to_clearing, to_account=to_account_number, amount=amount,
        intended_at=intended_at, intended_mono=intended_mono, simulation_id=simulation_id,
        instance_id=instance_id,
        transaction_id=uuid.uuid4() if channel is Channel.KAFKA else None,
    )


def _payee(payees: list[Payee], account: str) -> Payee:
    for payee in payees:
        if payee.account_number == account:
            return payee
    raise FixturesUnavailable(f"{account} is not a twin payee account")


@dataclass
class Run:
    """A series of payments on a schedule: a simulation or a background burst."""

    profile: LoadProfile
    offsets: Iterator[float]
    planned: int | None
    simulation_id: str | None = None
    first_index: int = 0
    seed: int | None = None
    keep_lags: bool = True
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    start_mono: float = 0.0
    start_utc: datetime | None = None
    dispatched: int = 0
    sent: int = 0
    dropped: int = 0
    lags: list[float] = field(default_factory=list)
    lag_max: float = 0.0
    stopped: bool = False
    ended_mono: float | None = None  # when the run finished (its last payment due, or stopped)
    done: threading.Event = field(default_factory=threading.Event)
    on_done: Callable[[Run], None] | None = None
    drops: DropBursts = field(default_factory=DropBursts)
    # the index of each offset, when the run is not consecutive indices from
    # ``first_index`` (a replica's share of a fleet simulation, ``tracking.fleet``)
    indices: Iterator[int] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._next_index = self.first_index
        self._lock = threading.Lock()

    def mark_sent(self) -> None:
        with self._lock:
            self.sent += 1

    def take_index(self) -> int:
        if self.indices is not None:
            return next(self.indices)
        index = self._next_index
        self._next_index += 1
        return index

    def record_lag(self, lag: float) -> None:
        with self._lock:
            self.lag_max = max(self.lag_max, lag)
            if self.keep_lags:
                self.lags.append(lag)

    def note_drop(self, reason: str) -> None:
        """Count a dropped payment; logged once per burst (``drops``)."""
        with self._lock:
            self.dropped += 1
            line = self.drops.dropped(reason, time.monotonic())
        self._log_drops(line)

    def note_sent(self) -> None:
        with self._lock:
            line = self.drops.sent(time.monotonic())
        self._log_drops(line)

    def _log_drops(self, line: DropLine | None) -> None:
        if line is not None:
            log.warning("payments_dropped", dropped=line.count, reason=line.reason,
                        reasons=line.reasons, over_seconds=line.seconds,
                        dropped_in_run=self.dropped, simulation=self.simulation_id)

    def finish(self) -> None:
        if not self.done.is_set():
            self.ended_mono = time.monotonic()
            with self._lock:
                line = self.drops.flush(self.ended_mono)
            self._log_drops(line)
            self.done.set()
            if self.on_done is not None:
                try:
                    self.on_done(self)
                except Exception as exc:
                    log.warning("run_done_callback_failed", error=repr(exc))
