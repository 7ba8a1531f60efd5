"""The balance model: what the twin's accounts should hold, from what the twin did.

Derived on every run from the ledger (deposits the twin made, payments it sent and
how far each got), so it survives restarts and needs no state of its own.

A payment that is not finished may be anywhere between where the twin last saw it
and its end, so every expectation is a *range*: a check flags an account only when
its real balance lies outside every state the unfinished payments could be in. A
REST payment moves along

    nothing → reserved at the source → credited at the destination → settled
                                     ↘ released (failed)

and a Kafka-channel payment bypasses the source bank (money entering from outside):

    nothing → credited at the destination

The same reasoning, applied to pairs of readings, gives the range of the sum of all
balances for the money-conservation check: when the source's bank is read before the
destination's, a payment can only be "in the air" as extra money (credited, not yet
debited), never as missing money.

When a bank's balances are read from its database together with its own journal
(outgoing and incoming transactions, in one snapshot), the journal says exactly
where each payment stood at that bank at that moment (``SourceView``,
``DestinationView``): the ranges collapse to exact values, so even a small
corruption is seen under steady load. A view that contradicts what the twin knows
is ignored (the status checks report such disagreements).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from bgmock_twin.contract import Channel

ZERO = Decimal("0")


class Progress(StrEnum):
    """How far the twin knows a payment got, as far as money is concerned."""

    SUBMITTED = "submitted"  # sent or about to be; the bank's answer is not known
    RESERVED = "reserved"  # the source bank accepted it (PENDING, amount reserved)
    CREDITED = "credited"  # the destination credited it (processed SUCCESS seen)
    NOT_CREDITED = "not_credited"  # a FAILED answer is known, the source may not have released
    SUCCEEDED = "succeeded"  # final at the source bank: debited, reservation cleared
    FAILED = "failed"  # final at the source bank: reservation released
    REJECTED = "rejected"  # refused by the source bank: nothing was ever reserved

    @property
    def finished(self) -> bool:
        return self in (Progress.SUCCEEDED, Progress.FAILED, Progress.REJECTED)


class _State(StrEnum):
    NONE = "none"
    RESERVED = "reserved"
    CREDITED = "credited"
    SETTLED = "settled"
    RELEASED = "released"
    EXTERNAL_CREDITED = "external_credited"


# Effect of a state on (source balance, source reserved, destination balance), in
# units of the payment's amount.
_EFFECT: dict[_State, tuple[int, int, int]] = {
    _State.NONE: (0, 0, 0),
    _State.RESERVED: (0, 1, 0),
    _State.CREDITED: (0, 1, 1),
    _State.SETTLED: (-1, 0, 1),
    _State.RELEASED: (0, 0, 0),
    _State.EXTERNAL_CREDITED: (0, 0, 1),
}

_Path = tuple[_State, ...]
_REST_SUCCESS: _Path = (_State.NONE, _State.RESERVED, _State.CREDITED, _State.SETTLED)
_REST_FAILURE: _Path = (_State.NONE, _State.RESERVED, _State.RELEASED)
_STILL: _Path = (_State.NONE,)
_KAFKA_SUCCESS: _Path = (_State.NONE, _State.EXTERNAL_CREDITED)

# Where a payment may be, given what the twin knows: (path, earliest index). It may
# be at any later index of the path by the time the banks are read.
_STARTS: dict[tuple[Channel, Progress], tuple[tuple[_Path, int], ...]] = {
    (Channel.REST, Progress.SUBMITTED): ((_REST_SUCCESS, 0), (_REST_FAILURE, 0)),
    (Channel.REST, Progress.RESERVED): ((_REST_SUCCESS, 1), (_REST_FAILURE, 1)),
    (Channel.REST, Progress.CREDITED): ((_REST_SUCCESS, 2),),
    (Channel.REST, Progress.NOT_CREDITED): ((_REST_FAILURE, 1),),
    (Channel.REST, Progress.SUCCEEDED): ((_REST_SUCCESS, 3),),
    (Channel.REST, Progress.FAILED): ((_REST_FAILURE, 2),),
    (Channel.REST, Progress.REJECTED): ((_STILL, 0),),
    (Channel.KAFKA, Progress.SUBMITTED): ((_KAFKA_SUCCESS, 0),),
    (Channel.KAFKA, Progress.RESERVED): ((_KAFKA_SUCCESS, 0),),
    (Channel.KAFKA, Progress.CREDITED): ((_KAFKA_SUCCESS, 1),),
    (Channel.KAFKA, Progress.SUCCEEDED): ((_KAFKA_SUCCESS, 1),),
    (Channel.KAFKA, Progress.NOT_CREDITED): ((_STILL, 0),),
    (Channel.KAFKA, Progress.FAILED): ((_STILL, 0),),
    (Channel.KAFKA, Progress.REJECTED): ((_STILL, 0),),
}


@dataclass(frozen=True, slots=True, order=True)
class AccountKey:
    """An account at one bank (``bank`` is the bank's service name, ``Bank.name``:
    ``bank_a`` or ``bank_b``). The one spelling of an account in the code base."""

    bank: str
    number: str

    def __str__(self) -> str:
        return f"{self.bank}/{self.number}"


@dataclass(frozen=True, slots=True)
class DepositFact:
    """Money the twin put into one of its accounts (also the balance it opened with).

    ``confirmed`` is False while the bank's answer is not known: it may or may not
    have been applied.
    """

    account: AccountKey
    amount: Decimal
    confirmed: bool = True


class SourceView(StrEnum):
    """The payment's outgoing transaction in the source bank's journal."""

    ABSENT = "absent"  # not stored (yet): nothing reserved
    PENDING = "pending"  # reserved, not settled
    SUCCESS = "success"  # settled: debited
    FAILED = "failed"  # refused or released: no effect


class DestinationView(StrEnum):
    """The payment's incoming transaction in the destination bank's journal."""

    CREDITED = "credited"  # stored SUCCESS: the payee was credited
    NOT_CREDITED = "not_credited"  # absent or FAILED


_SOURCE_STATES: dict[SourceView, frozenset[_State]] = {
    SourceView.ABSENT: frozenset({_State.NONE}),
    SourceView.PENDING: frozenset({_State.RESERVED, _State.CREDITED}),
    SourceView.SUCCESS: frozenset({_State.SETTLED}),
    SourceView.FAILED: frozenset({_State.NONE, _State.RELEASED}),
}
_DESTINATION_STATES: dict[DestinationView, frozenset[_State]] = {
    DestinationView.CREDITED: frozenset(
        {_State.CREDITED, _State.SETTLED, _State.EXTERNAL_CREDITED}),
    DestinationView.NOT_CREDITED: frozenset({_State.NONE, _State.RESERVED, _State.RELEASED}),
}


@dataclass(frozen=True, slots=True)
class PaymentFact:
    """A synthetic payment as the ledger knows it, and optionally where the source
    and destination banks' journals showed it when their balances were read."""

    payment_id: str
    channel: Channel
    source: AccountKey
    destination: AccountKey
    amount: Decimal
    progress: Progress
    source_view: SourceView | None = None
    destination_view: DestinationView | None = None


@dataclass(frozen=True, slots=True)
class Range:
    """A closed interval of amounts."""

    lo: Decimal
    hi: Decimal

    @classmethod
    def exactly(cls, value: Decimal) -> Range:
        return cls(value, value)

    def __add__(self, other: Range) -> Range:
        return Range(self.lo + other.lo, self.hi + other.hi)

    @property
    def exact(self) -> bool:
        return self.lo == self.hi

    def contains(self, value: Decimal) -> bool:
        return self.lo <= value <= self.hi

    def distance(self, value: Decimal) -> Decimal:
        """How far ``value`` lies outside the range (0 inside)."""
        if value < self.lo:
            return self.lo - value
        if value > self.hi:
            return value - self.hi
        return ZERO

    def as_dict(self) -> dict[str, str]:
        return {"min": format(self.lo, "f"), "max": format(self.hi, "f")}


ZERO_RANGE = Range(ZERO, ZERO)


@dataclass(frozen=True, slots=True)
class AccountExpectation:
    account: AccountKey
    balance: Range
    reserved: Range
    in_flight: tuple[str, ...] = ()  # payments whose unknown progress widens the ranges


@dataclass(frozen=True, slots=True)
class Expectations:
    """What every twin account should hold, and what all of them hold together."""

    accounts: dict[AccountKey, AccountExpectation]
    total: Range  # sum of the balances of all accounts (money conservation)
    deposits: Range  # money the twin deposited (the only legitimate inflow besides ↓)
    external: Range  # Kafka-channel money credited from outside
    in_flight: tuple[str, ...] = field(default=())


def _possible(payment: PaymentFact) -> list[tuple[_Path, int]]:
    return list(_STARTS[(payment.channel, payment.progress)])


def _states(payment: PaymentFact) -> set[_State]:
    return {path[i] for path, start in _possible(payment) for i in range(start, len(path))}


def _narrowed(states: set[_State], view: frozenset[_State] | None) -> set[_State]:
    """The states a journal view allows; all of them if it contradicts the twin."""
    if view is None or payment_view_ignored(states, view):
        return states
    return states & view


def payment_view_ignored(states: set[_State], view: frozenset[_State]) -> bool:
    return not states & view


def _side_views(payment: PaymentFact) -> tuple[frozenset[_State] | None,
                                               frozenset[_State] | None]:
    source = _SOURCE_STATES[payment.source_view] if payment.source_view is not None and \
        payment.channel is Channel.REST else None
    destination = _DESTINATION_STATES[payment.destination_view] \
        if payment.destination_view is not None else None
    return source, destination


def payment_is_certain(payment: PaymentFact) -> bool:
    """True when the payment's effect on the balances is known exactly."""
    return len({_EFFECT[s] for s in _states(payment)}) == 1


def _pair_sums(payment: PaymentFact, tracked: set[AccountKey],
               source_first: bool | None) -> Range:
    """Range of the payment's contribution to the sum of tracked balances when the
    source and the destination are read at two different moments.

    ``source_first``: True when the source's bank is read before the destination's,
    False for the other way round, None when the order is not known.
    """
    amount = payment.amount
    src_tracked = payment.source in tracked
    dst_tracked = payment.destination in tracked
    all_states = _states(payment)
    src_view, dst_view = _side_views(payment)
    src_ok = _narrowed(all_states, src_view)
    dst_ok = _narrowed(all_states, dst_view)
    sums: set[int] = set()
    for path, start in _possible(payment):
        for i in range(start, len(path)):  # state seen when reading the source
            if path[i] not in src_ok:
                continue
            for j in range(start, len(path)):  # state seen when reading the destination
                if path[j] not in dst_ok:
                    continue
                if payment.source == payment.destination and i != j:
                    continue
                if source_first is True and j < i:
                    continue
                if source_first is False and i < j:
                    continue
                src = _EFFECT[path[i]][0] if src_tracked else 0
                dst = _EFFECT[path[j]][2] if dst_tracked else 0
                sums.add(src + dst)
    if not sums:  # views that fit no single path together: fall back to the ledger
        return _pair_sums(PaymentFact(payment.payment_id, payment.channel, payment.source,
                                      payment.destination, payment.amount, payment.progress),
                          tracked, source_first)
    return Range(amount * min(sums), amount * max(sums))


def _effects(payment: PaymentFact) -> dict[AccountKey, tuple[set[int], set[int]]]:
    """Possible (balance, reserved) multipliers per account touched by the payment."""
    all_states = _states(payment)
    src_view, dst_view = _side_views(payment)
    result: dict[AccountKey, tuple[set[int], set[int]]] = {}
    if payment.source == payment.destination:
        both = _narrowed(_narrowed(all_states, src_view), dst_view)
        result[payment.source] = ({_EFFECT[s][0] + _EFFECT[s][2] for s in both},
                                  {_EFFECT[s][1] for s in both})
        return result
    src_states = _narrowed(all_states, src_view)
    dst_states = _narrowed(all_states, dst_view)
    result[payment.source] = ({_EFFECT[s][0] for s in src_states},
                              {_EFFECT[s][1] for s in src_states})
    result[payment.destination] = ({_EFFECT[s][2] for s in dst_states}, {0})
    return result


def expect(
    accounts: Iterable[AccountKey],
    deposits: Iterable[DepositFact],
    payments: Iterable[PaymentFact],
    read_order: Sequence[str] | None = None,
) -> Expectations:
    """The expected state of the twin's accounts.

    ``accounts`` are the twin's own accounts (any account a deposit names is added);
    effects on other accounts are ignored. ``read_order`` lists the banks in the
    order they are read (each one fully before the next), which narrows the range of
    the total; None means the order is not known.
    """
    tracked = set(accounts)
    deposit_list = list(deposits)
    tracked.update(d.account for d in deposit_list)
    balance: dict[AccountKey, Range] = {a: ZERO_RANGE for a in tracked}
    reserved: dict[AccountKey, Range] = {a: ZERO_RANGE for a in tracked}
    in_flight: dict[AccountKey, list[str]] = {a: [] for a in tracked}
    deposited = ZERO_RANGE
    for deposit in deposit_list:
        amount = Range(deposit.amount, deposit.amount) if deposit.confirmed else \
            Range(min(ZERO, deposit.amount), max(ZERO, deposit.amount))
        balance[deposit.account] += amount
        deposited += amount
    total = deposited
    external = ZERO_RANGE
    all_in_flight: list[str] = []
    order = {bank: i for i, bank in enumerate(read_order or ())}
    for payment in payments:
        uncertain = False
        for account, (bals, ress) in _effects(payment).items():
            if len(bals) > 1 or len(ress) > 1:
                uncertain = True
            if account not in tracked:
                continue
            a = payment.amount
            balance[account] += Range(a * min(bals), a * max(bals))
            reserved[account] += Range(a * min(ress), a * max(ress))
            if len(bals) > 1 or len(ress) > 1:
                in_flight[account].append(payment.payment_id)
        if uncertain:
            all_in_flight.append(payment.payment_id)
        src_bank, dst_bank = payment.source.bank, payment.destination.bank
        source_first: bool | None = None
        if src_bank != dst_bank and src_bank in order and dst_bank in order:
            source_first = order[src_bank] < order[dst_bank]
        total += _pair_sums(payment, tracked, source_first)
        if payment.channel is Channel.KAFKA and payment.destination in tracked:
            credited = _effects(payment)[payment.destination][0]
            external += Range(payment.amount * min(credited), payment.amount * max(credited))
    return Expectations(
        accounts={
            a: AccountExpectation(a, balance[a], reserved[a], tuple(in_flight[a]))
            for a in sorted(tracked)
        },
        total=total,
        deposits=deposited,
        external=external,
        in_flight=tuple(all_in_flight),
    )
