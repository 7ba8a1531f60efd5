"""The balance model: exact where the twin knows, sound ranges where it cannot.

The property test plays the real system forward (each payment moving along its
path at its own pace, the twin learning of each step late, the banks read one after
the other later still) and checks that what a bank could show always lies in the
model's ranges: the reconciliation never flags a payment that is simply unfinished.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from bgmock_twin.books.model import (
    AccountKey,
    DepositFact,
    DestinationView,
    PaymentFact,
    Progress,
    Range,
    SourceView,
    expect,
    payment_is_certain,
)
from bgmock_twin.contract import Channel

A1 = AccountKey("bank_a", "TWINA1")
A2 = AccountKey("bank_a", "TWINA2")
B1 = AccountKey("bank_b", "TWINB1")
B2 = AccountKey("bank_b", "TWINB2")
OTHER = AccountKey("bank_b", "SOMEONE")
D = Decimal


def _pay(pid: str, src: AccountKey, dst: AccountKey, amount: str, progress: Progress,
         channel: Channel = Channel.REST) -> PaymentFact:
    return PaymentFact(pid, channel, src, dst, D(amount), progress)


def _deposits() -> list[DepositFact]:
    return [DepositFact(a, D("1000.00")) for a in (A1, A2, B1, B2)]


def test_finished_payments_give_exact_balances() -> None:
    payments = [
        _pay("p1", A1, B1, "10.50", Progress.SUCCEEDED),
        _pay("p2", B1, A2, "3.25", Progress.SUCCEEDED),
        _pay("p3", A2, B2, "7.00", Progress.FAILED),
        _pay("p4", A1, B2, "5000.00", Progress.REJECTED),
        _pay("p5", A1, B2, "4.00", Progress.SUCCEEDED, Channel.KAFKA),
    ]
    model = expect([A1, A2, B1, B2], _deposits(), payments, ("bank_a", "bank_b"))
    got = {a: (m.balance, m.reserved) for a, m in model.accounts.items()}
    assert got == {
        A1: (Range.exactly(D("989.50")), Range.exactly(D("0"))),
        A2: (Range.exactly(D("1003.25")), Range.exactly(D("0"))),
        B1: (Range.exactly(D("1007.25")), Range.exactly(D("0"))),
        # Kafka channel: money from outside, the source (A1) is not debited
        B2: (Range.exactly(D("1004.00")), Range.exactly(D("0"))),
    }
    assert model.total == Range.exactly(D("4004.00"))
    assert model.deposits == Range.exactly(D("4000.00"))
    assert model.external == Range.exactly(D("4.00"))
    assert model.in_flight == ()
    assert all(m.in_flight == () for m in model.accounts.values())


def test_in_flight_payment_widens_only_what_it_can_still_change() -> None:
    reserved = _pay("p1", A1, B1, "10", Progress.RESERVED)
    model = expect([A1, B1], [DepositFact(A1, D("100")), DepositFact(B1, D("0"))], [reserved],
                   ("bank_a", "bank_b"))
    a1, b1 = model.accounts[A1], model.accounts[B1]
    assert a1.balance == Range(D("90"), D("100"))  # settles (-10) or not yet / failed
    assert a1.reserved == Range(D("0"), D("10"))  # reserved until settled or released
    assert b1.balance == Range(D("0"), D("10"))
    assert b1.reserved == Range.exactly(D("0"))
    assert a1.in_flight == ("p1",) and b1.in_flight == ("p1",)
    # source bank read first: the payment can only show as extra money, never missing
    assert model.total == Range(D("100"), D("110"))
    # read the other way round, the debit may be seen before the credit
    reverse = expect([A1, B1], [DepositFact(A1, D("100")), DepositFact(B1, D("0"))],
                     [reserved], ("bank_b", "bank_a"))
    assert reverse.total == Range(D("90"), D("110"))
    unordered = expect([A1, B1], [DepositFact(A1, D("100"))], [reserved])
    assert unordered.total == Range(D("90"), D("110"))


def test_credited_and_not_credited_are_narrower() -> None:
    credited = expect([A1, B1], [], [_pay("p", A1, B1, "5", Progress.CREDITED)])
    assert credited.accounts[A1].balance == Range(D("-5"), D("0"))
    assert credited.accounts[A1].reserved == Range(D("0"), D("5"))
    assert credited.accounts[B1].balance == Range.exactly(D("5"))
    failing = expect([A1, B1], [], [_pay("p", A1, B1, "5", Progress.NOT_CREDITED)])
    assert failing.accounts[A1].balance == Range.exactly(D("0"))
    assert failing.accounts[A1].reserved == Range(D("0"), D("5"))
    assert failing.accounts[B1].balance == Range.exactly(D("0"))
    assert failing.total == Range.exactly(D("0"))


def test_kafka_channel_in_flight_and_submitted_rest() -> None:
    kafka = expect([A1, B1], [], [_pay("k", A1, B1, "7", Progress.SUBMITTED, Channel.KAFKA)])
    assert kafka.accounts[A1].balance == Range.exactly(D("0"))
    assert kafka.accounts[A1].reserved == Range.exactly(D("0"))
    assert kafka.accounts[B1].balance == Range(D("0"), D("7"))
    assert kafka.external == Range(D("0"), D("7"))
    submitted = expect([A1, B1], [], [_pay("s", A1, B1, "7", Progress.SUBMITTED)])
    assert submitted.accounts[A1].balance == Range(D("-7"), D("0"))
    assert submitted.accounts[A1].reserved == Range(D("0"), D("7"))


def test_money_to_or_from_accounts_the_twin_does_not_own() -> None:
    model = expect([A1], [DepositFact(A1, D("50"))],
                   [_pay("out", A1, OTHER, "20", Progress.SUCCEEDED),
                    _pay("in", OTHER, A1, "5", Progress.SUCCEEDED)])
    assert set(model.accounts) == {A1}
    assert model.accounts[A1].balance == Range.exactly(D("35"))
    assert model.total == Range.exactly(D("35"))


def test_unconfirmed_deposit_may_or_may_not_be_applied() -> None:
    model = expect([], [DepositFact(A1, D("100")), DepositFact(A1, D("30"), confirmed=False)], [])
    assert model.accounts[A1].balance == Range(D("100"), D("130"))
    assert model.deposits == Range(D("100"), D("130"))


def test_range_distance() -> None:
    r = Range(D("10"), D("20"))
    assert (r.distance(D("5")), r.distance(D("15")), r.distance(D("26.5"))) == \
        (D("5"), D("0"), D("6.5"))
    assert r.as_dict() == {"min": "10", "max": "20"}


def test_certainty() -> None:
    assert payment_is_certain(_pay("p", A1, B1, "1", Progress.SUCCEEDED))
    assert payment_is_certain(_pay("p", A1, B1, "1", Progress.REJECTED))
    assert not payment_is_certain(_pay("p", A1, B1, "1", Progress.CREDITED))


# --- the property: whatever the real system does, the model's ranges hold -----------
# The real paths a payment can take and how the twin names what it has learnt.
REAL_PATHS: dict[tuple[Channel, str], list[list[Progress]]] = {
    # index = real step; each entry lists what the twin may call that knowledge
    (Channel.REST, "success"): [[Progress.SUBMITTED], [Progress.RESERVED], [Progress.CREDITED],
                                [Progress.SUCCEEDED]],
    (Channel.REST, "failure"): [[Progress.SUBMITTED], [Progress.RESERVED, Progress.NOT_CREDITED],
                                [Progress.FAILED]],
    (Channel.REST, "rejected"): [[Progress.SUBMITTED, Progress.REJECTED]],
    (Channel.KAFKA, "success"): [[Progress.SUBMITTED], [Progress.CREDITED, Progress.SUCCEEDED]],
    (Channel.KAFKA, "failure"): [[Progress.SUBMITTED, Progress.FAILED]],
}
# (source balance, source reserved, destination balance) per real step
REAL_EFFECTS: dict[tuple[Channel, str], list[tuple[int, int, int]]] = {
    (Channel.REST, "success"): [(0, 0, 0), (0, 1, 0), (0, 1, 1), (-1, 0, 1)],
    (Channel.REST, "failure"): [(0, 0, 0), (0, 1, 0), (0, 0, 0)],
    (Channel.REST, "rejected"): [(0, 0, 0)],
    (Channel.KAFKA, "success"): [(0, 0, 0), (0, 0, 1)],
    (Channel.KAFKA, "failure"): [(0, 0, 0)],
}
# what each bank's journal shows at each real step
SOURCE_VIEWS: dict[tuple[Channel, str], list[SourceView]] = {
    (Channel.REST, "success"): [SourceView.ABSENT, SourceView.PENDING, SourceView.PENDING,
                                SourceView.SUCCESS],
    (Channel.REST, "failure"): [SourceView.ABSENT, SourceView.PENDING, SourceView.FAILED],
    (Channel.REST, "rejected"): [SourceView.FAILED],
    (Channel.KAFKA, "success"): [SourceView.ABSENT, SourceView.ABSENT],
    (Channel.KAFKA, "failure"): [SourceView.ABSENT],
}
N, C = DestinationView.NOT_CREDITED, DestinationView.CREDITED
DESTINATION_VIEWS: dict[tuple[Channel, str], list[DestinationView]] = {
    (Channel.REST, "success"): [N, N, C, C],
    (Channel.REST, "failure"): [N, N, N],
    (Channel.REST, "rejected"): [N],
    (Channel.KAFKA, "success"): [N, C],
    (Channel.KAFKA, "failure"): [N],
}
ACCOUNTS = [A1, A2, B1, B2, OTHER]
TWIN = [A1, A2, B1, B2]


@dataclass
class Trajectory:
    fact_args: tuple[str, Channel, AccountKey, AccountKey, Decimal]
    kind: str
    step_times: list[int]  # when the real payment reached steps 1, 2, ...
    knowledge_lag: list[int]  # how long after each step the twin learns of it
    names: list[int]  # which name the twin uses for the knowledge

    def real_step(self, t: int) -> int:
        return sum(1 for when in self.step_times if when <= t)

    def known_step(self, t: int) -> int:
        return sum(1 for when, lag in zip(self.step_times, self.knowledge_lag, strict=True)
                   if when + lag <= t)


@st.composite
def trajectories(draw: st.DrawFn, index: int) -> Trajectory:
    channel = draw(st.sampled_from(list(Channel)))
    kinds = [k for c, k in REAL_PATHS if c is channel]
    kind = draw(st.sampled_from(kinds))
    steps = len(REAL_PATHS[(channel, kind)]) - 1
    reached = draw(st.integers(0, steps))  # a payment may stop anywhere (stuck)
    times = sorted(draw(st.lists(st.integers(0, 30), min_size=reached, max_size=reached)))
    lags = draw(st.lists(st.integers(0, 10), min_size=reached, max_size=reached))
    # the twin learns of steps in order: knowledge times must not go backwards
    known = [t + lag for t, lag in zip(times, lags, strict=True)]
    for i in range(1, len(known)):
        known[i] = max(known[i], known[i - 1])
    lags = [k - t for k, t in zip(known, times, strict=True)]
    names = draw(st.lists(st.integers(0, 1), min_size=steps + 1, max_size=steps + 1))
    src = draw(st.sampled_from(ACCOUNTS))
    dst = draw(st.sampled_from(ACCOUNTS))
    cents = draw(st.integers(1, 100_000))
    return Trajectory((f"p{index}", channel, src, dst, Decimal(cents) / 100), kind, times,
                      lags, names)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Trajectory], int, int, int, bool, list[bool]]:
    count = draw(st.integers(0, 8))
    trajs = [draw(trajectories(i)) for i in range(count)]
    ledger_time = draw(st.integers(0, 40))
    first_read = ledger_time + draw(st.integers(0, 10))
    second_read = first_read + draw(st.integers(0, 10))
    a_first = draw(st.booleans())
    journaled = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    return trajs, ledger_time, first_read, second_read, a_first, journaled


def _observe(trajs: list[Trajectory], read_time: dict[str, int]) -> dict[AccountKey, Decimal]:
    balance = {a: Decimal("100") for a in TWIN}
    for traj in trajs:
        _, channel, src, dst, amount = traj.fact_args
        effects = REAL_EFFECTS[(channel, traj.kind)]
        src_effect = effects[traj.real_step(read_time[src.bank])]
        dst_effect = effects[traj.real_step(read_time[dst.bank])]
        if src in balance:
            balance[src] += src_effect[0] * amount
        if dst in balance:
            balance[dst] += dst_effect[2] * amount
    return balance


def _observe_reserved(trajs: list[Trajectory], read_time: dict[str, int]) -> dict[
        AccountKey, Decimal]:
    reserved = {a: Decimal("0") for a in TWIN}
    for traj in trajs:
        _, channel, src, _, amount = traj.fact_args
        effect = REAL_EFFECTS[(channel, traj.kind)][traj.real_step(read_time[src.bank])]
        if src in reserved:
            reserved[src] += effect[1] * amount
    return reserved


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_whatever_the_banks_show_lies_in_the_model(
    world: tuple[list[Trajectory], int, int, int, bool, list[bool]],
) -> None:
    """Sound always; exact once every payment is seen in the banks' journals (read
    in the same snapshot as the balances)."""
    trajs, ledger_time, first, second, a_first, journaled = world
    read_time = {"bank_a": first, "bank_b": second} if a_first else \
        {"bank_b": first, "bank_a": second}
    facts = []
    for traj, seen in zip(trajs, journaled, strict=True):
        pid, channel, src, dst, amount = traj.fact_args
        names = REAL_PATHS[(channel, traj.kind)][traj.known_step(ledger_time)]
        progress = names[traj.names[traj.known_step(ledger_time)] % len(names)]
        key = (channel, traj.kind)
        source_view = SOURCE_VIEWS[key][traj.real_step(read_time[src.bank])] if seen else None
        destination_view = DESTINATION_VIEWS[key][traj.real_step(read_time[dst.bank])] \
            if seen else None
        facts.append(PaymentFact(pid, channel, src, dst, amount, progress, source_view,
                                 destination_view))
    order = ("bank_a", "bank_b") if a_first else ("bank_b", "bank_a")
    model = expect(TWIN, [DepositFact(a, Decimal("100")) for a in TWIN], facts, order)
    observed = _observe(trajs, read_time)
    reserved = _observe_reserved(trajs, read_time)
    for account in TWIN:
        assert model.accounts[account].balance.contains(observed[account]), account
        assert model.accounts[account].reserved.contains(reserved[account]), account
    assert model.total.contains(sum(observed.values(), Decimal("0")))
    if all(journaled):
        assert all(m.balance.exact and m.reserved.exact for m in model.accounts.values())
        assert model.total.exact and model.in_flight == ()


def test_journal_views_make_in_flight_payments_exact() -> None:
    reserved = _pay("p1", A1, B1, "10", Progress.RESERVED)
    seen = PaymentFact("p1", Channel.REST, A1, B1, D("10"), Progress.RESERVED,
                       SourceView.PENDING, DestinationView.CREDITED)
    model = expect([A1, B1], [], [seen])
    assert model.accounts[A1].balance == Range.exactly(D("0"))
    assert model.accounts[A1].reserved == Range.exactly(D("10"))
    assert model.accounts[B1].balance == Range.exactly(D("10"))
    assert model.total == Range.exactly(D("10"))  # credited, not yet debited
    assert model.in_flight == ()
    # a view that contradicts the twin's knowledge is ignored, not trusted
    contradicting = PaymentFact("p1", Channel.REST, A1, B1, D("10"), Progress.SUCCEEDED,
                                SourceView.PENDING, DestinationView.NOT_CREDITED)
    assert expect([A1, B1], [], [contradicting]).accounts == \
        expect([A1, B1], [], [_pay("p1", A1, B1, "10", Progress.SUCCEEDED)]).accounts
    assert expect([A1, B1], [], [reserved]).accounts[A1].balance == Range(D("-10"), D("0"))


def test_conservation_sees_money_lost_in_flight_that_no_single_account_shows() -> None:
    """The source debited while the destination never got the money: each account is
    within its own range, but the sum is not (read in source-first order)."""
    pay = _pay("p", A1, B1, "10", Progress.RESERVED)
    model = expect([A1, B1], [DepositFact(A1, D("100"))], [pay], ("bank_a", "bank_b"))
    a1, b1 = D("90"), D("0")  # debited at A, never credited at B
    assert model.accounts[A1].balance.contains(a1)
    assert model.accounts[B1].balance.contains(b1)
    assert not model.total.contains(a1 + b1)
