"""One reconciliation run: read the real state and the ledger within a time budget,
run every check, and keep what is needed between runs.

Order of reads, and why:
1. from the ledger, the finished payments whose statuses must agree, and the
   twin's accounts;
2. at the same time, on separate threads: each configured database (one snapshot
   for the invariants, one with the twin's balances and the bank's journal of
   them) and, for a bank without a database, its twin accounts through REST
   (Bank A then Bank B);
3. after the balances were read, the ledger snapshot for the balance model: rows
   that changed since step 2 began are taken as "may be anywhere", so the model
   is never behind what the banks showed.

Every read has a deadline. A read that misses it, or fails, makes the checks that
need it ``unknown`` and is not waited for again while it still runs, so a slow
database costs a run its budget, never the scheduler's other jobs.

Balances come from a bank's database when it is configured, read in one snapshot
with the bank's journal of the twin's accounts, which pins every recent payment to
where it stood at that bank (exact expectations even under load); otherwise from
REST, where unfinished payments leave ranges.

A balance suspicion is confirmed before it is reported: the balance reads and the
model are done once more a moment later, and only drift seen both times counts
(a deposit recorded a moment after the bank applied it is not drift).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Engine

from bgmock_twin.books import checks as c
from bgmock_twin.books.checks import AccountReading, CheckResult, CheckStatus, FinishedPayment
from bgmock_twin.books.model import (
    BANKS,
    AccountKey,
    Channel,
    DestinationView,
    PaymentFact,
    SourceView,
    expect,
    payment_is_certain,
)
from bgmock_twin.books.sources import (
    BankBooks,
    BankSnapshot,
    ClearingSnapshot,
    LedgerReader,
    LedgerSnapshot,
    PaymentMeta,
    read_bank_books,
    read_bank_db,
    read_clearing_db,
    read_rest_accounts,
)
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

T = TypeVar("T")

DB_OF_SERVICE = {"bank_a": "db_bank_a", "bank_b": "db_bank_b", "clearing": "db_switch"}
READ_ORDER = ("bank_a", "bank_b")
CHANGED_MARGIN = timedelta(seconds=1)  # clock slack when comparing ledger write times
STATUS_GRACE = timedelta(seconds=2)  # a finished payment's rows settle everywhere first
STATUS_HOLD_LIMIT = 500  # disagreeing / unreadable payments kept for another look
STATUS_BATCH = 2000
CONFIRM_DELAY_SECONDS = 1.0
JOURNAL_WINDOW = timedelta(minutes=5)  # journal rows read with the balances
JOURNAL_SKEW = timedelta(minutes=1)  # clock difference tolerated between twin and banks


@dataclass(frozen=True, slots=True)
class ReconcileConfig:
    budget_seconds: float
    rest_timeout_seconds: float
    statement_timeout_ms: int
    sla_seconds: float
    outbox_max_pending: float
    outbox_max_age_seconds: float
    status_lookback: timedelta = timedelta(minutes=10)
    confirm_delay_seconds: float = CONFIRM_DELAY_SECONDS


@dataclass(slots=True)
class Report:
    ran_at: datetime
    duration_seconds: float
    results: dict[str, CheckResult]
    sources: dict[str, str]
    clock_offsets: dict[str, timedelta] = field(default_factory=dict)

    @property
    def status(self) -> str:
        statuses = {r.status for r in self.results.values()}
        if CheckStatus.VIOLATED in statuses:
            return "violated"
        if CheckStatus.UNKNOWN in statuses:
            return "unknown"
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ran_at": self.ran_at.isoformat(),
            "duration_seconds": round(self.duration_seconds, 3),
            "status": self.status,
            "violations": sum(len(r.violations) for r in self.results.values()),
            "checks": {name: self.results[name].as_dict() for name in c.CHECKS
                       if name in self.results},
            "sources": dict(sorted(self.sources.items())),
            "clock_offsets_seconds": {service: round(offset.total_seconds(), 3)
                                      for service, offset in sorted(self.clock_offsets.items())},
        }


class SourceBusy(Exception):
    """The previous read of this source has not finished yet."""


class _Reads:
    """Reads on a small pool, each with a deadline; a source whose previous read is
    still running is not read again (it reports busy at once)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="books-read")
        self._running: dict[str, Future[Any]] = {}
        self._lock = threading.Lock()

    def submit(self, name: str, func: Callable[[], T]) -> Future[T]:
        with self._lock:
            previous = self._running.get(name)
            if previous is not None and not previous.done():
                failed: Future[T] = Future()
                failed.set_exception(SourceBusy(f"{name}: previous read still running"))
                return failed
            future = self._pool.submit(func)
            self._running[name] = future
            return future

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class _Got(Generic[T]):
    value: T | None
    state: str  # "ok", "timeout", "busy ..." or "error: ..."


def _outcome(future: Future[T], deadline: float) -> _Got[T]:
    """The value of a read, or None and why it has none."""
    try:
        return _Got(future.result(timeout=max(0.0, deadline - time.monotonic())), "ok")
    except FutureTimeout:
        return _Got(None, "timeout")
    except SourceBusy:
        return _Got(None, "busy (previous read still running)")
    except Exception as exc:
        return _Got(None, f"error: {_short(exc)}")


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {first[:160]}"


@dataclass(slots=True)
class _BalancePass:
    readings: dict[AccountKey, AccountReading | None]
    banks_read: list[str]
    drift: CheckResult
    conservation: CheckResult
    sources: dict[str, str] = field(default_factory=dict)


def clock_offset(samples: Iterable[tuple[datetime, datetime]]) -> timedelta | None:
    """A service's clock minus the twin's, from (created_at on the service's clock,
    naive; intended send time on the twin's, UTC) pairs of the same payments.

    A row is written after the twin meant to send, so each difference is the
    offset plus a delay: the smallest is the closest estimate (None without data).
    """
    best: timedelta | None = None
    for created_at, intended_at in samples:
        difference = created_at - intended_at.astimezone(UTC).replace(tzinfo=None)
        if best is None or difference < best:
            best = difference
    return best


def with_views(
    payments: Sequence[PaymentFact],
    meta: Mapping[str, PaymentMeta],
    books: Mapping[str, BankBooks],
    absent_since: Mapping[str, datetime],
) -> list[PaymentFact]:
    """Pin each uncertain payment to what the banks' journals showed (pure).

    A row's status says where the payment stood. A missing row says "not there
    yet" only when the journal was read completely and the payment is recent
    enough (intended at or after ``absent_since[bank]``, UTC; banks without an
    entry prove nothing by absence) for its rows to be in the window. A payment
    whose transaction id is not known yet (the bank's 202 is on its way) is "not
    there" at an account whose journal holds no row the ledger cannot explain:
    ``meta`` must list every payment intended since the window began.
    """
    known = {info.transaction_id for info in meta.values() if info.transaction_id is not None}
    unexplained_out = {(bank, row[1]) for bank, b in books.items()
                       for tx, row in b.outgoing.items() if tx not in known}
    unexplained_in = {(bank, row[1]) for bank, b in books.items()
                      for tx, row in b.incoming.items() if tx not in known}
    result: list[PaymentFact] = []
    for payment in payments:
        info = meta.get(payment.payment_id)
        if info is None or payment_is_certain(payment):
            result.append(payment)
            continue
        tx = info.transaction_id
        source_view: SourceView | None = None
        src_bank = payment.source.bank
        src = books.get(src_bank)
        if src is not None and payment.channel is Channel.REST:
            row = src.outgoing.get(tx) if tx is not None else None
            if row is not None:
                source_view = {"PENDING": SourceView.PENDING, "SUCCESS": SourceView.SUCCESS,
                               "FAILED": SourceView.FAILED}.get(row[0])
            elif src.complete and _recent(info, absent_since.get(src_bank)) and (
                    tx is not None or (src_bank, payment.source.number) not in unexplained_out):
                source_view = SourceView.ABSENT
        destination_view: DestinationView | None = None
        dst_bank = payment.destination.bank
        dst = books.get(dst_bank)
        if dst is not None:
            row = dst.incoming.get(tx) if tx is not None else None
            if row is not None and row[0] == "SUCCESS":
                destination_view = DestinationView.CREDITED
            elif (row is not None and row[0] == "FAILED") or (
                    row is None and dst.complete and _recent(info, absent_since.get(dst_bank))
                    and (tx is not None or (dst_bank, payment.destination.number)
                         not in unexplained_in)):
                destination_view = DestinationView.NOT_CREDITED
        result.append(PaymentFact(payment.payment_id, payment.channel, payment.source,
                                  payment.destination, payment.amount, payment.progress,
                                  source_view, destination_view))
    return result


def _recent(info: PaymentMeta, since: datetime | None) -> bool:
    return since is not None and info.intended_at >= since


class Reconciler:
    """Runs the checks; keeps the little state they need between runs."""

    def __init__(
        self,
        config: ReconcileConfig,
        *,
        ledger: LedgerReader | None,
        clients: BGMockClients | None,
        engines: Mapping[str, Engine],
        twin_accounts: Callable[[], Iterable[AccountKey]],
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clients = clients
        self.engines = dict(engines)
        self.twin_accounts = twin_accounts
        self.now = now or (lambda: datetime.now(UTC))
        self._reads = _Reads()
        self._status_watermark: datetime | None = None
        self._status_hold: dict[str, FinishedPayment] = {}
        self._pending_diffs: dict[AccountKey, Decimal] = {}
        self._known_accounts: set[AccountKey] = set()
        # each service's clock minus the twin's (its timestamps are LocalDateTime)
        self._offsets: dict[str, timedelta] = {}

    @property
    def clock_offsets(self) -> dict[str, timedelta]:
        return dict(self._offsets)

    def close(self) -> None:
        self._reads.close()

    # --- one run --------------------------------------------------------------------------
    def run(self) -> Report:
        started = time.monotonic()
        deadline = started + self.config.budget_seconds
        ran_at = self.now()
        sources: dict[str, str] = {}
        results: dict[str, CheckResult] = {}

        # 1. what the ledger says must be compared, and which accounts are the twin's
        candidates, accounts, ledger_state = self._ledger_prelude(ran_at, deadline)
        sources["ledger"] = ledger_state

        # 2. the real state, in parallel
        naive_now = ran_at.astimezone(UTC).replace(tzinfo=None)
        sla = timedelta(seconds=self.config.sla_seconds)
        known_offsets = self.clock_offsets  # as estimated so far; 0 until known

        def stale_cutoff(service: str) -> datetime:
            return naive_now + known_offsets.get(service, timedelta(0)) - sla

        bank_futures: dict[str, Future[BankSnapshot]] = {}
        ids_out: dict[str, list[uuid.UUID]] = {b: [] for b in BANKS}
        ids_in: dict[str, list[uuid.UUID]] = {b: [] for b in BANKS}
        for payment in candidates:
            if payment.channel == "rest" and payment.source_service in ids_out:
                ids_out[payment.source_service].append(payment.transaction_id)
            if payment.destination_service in ids_in:
                ids_in[payment.destination_service].append(payment.transaction_id)
        for bank in BANKS:
            engine = self.engines.get(DB_OF_SERVICE[bank])
            if engine is not None:
                bank_futures[bank] = self._reads.submit(
                    DB_OF_SERVICE[bank], _bind_bank(engine, bank, ids_out[bank], ids_in[bank],
                                                    stale_cutoff(bank),
                                                    self.config.statement_timeout_ms))
        clearing_future: Future[ClearingSnapshot] | None = None
        clearing_engine = self.engines.get("db_switch")
        if clearing_engine is not None:
            clearing_future = self._reads.submit("db_switch", _bind_clearing(
                clearing_engine, [p.transaction_id for p in candidates],
                stale_cutoff("clearing"), self.config.statement_timeout_ms))
        balance = self._balance_pass(accounts, deadline, ledger_ok=ledger_state == "ok")
        sources.update(balance.sources)

        banks: dict[str, BankSnapshot] = {}
        for bank, future in bank_futures.items():
            bank_read = _outcome(future, deadline)
            sources[DB_OF_SERVICE[bank]] = bank_read.state
            if bank_read.value is not None:
                banks[bank] = bank_read.value
        clearing: ClearingSnapshot | None = None
        if clearing_future is not None:
            clearing_read = _outcome(clearing_future, deadline)
            clearing = clearing_read.value
            sources["db_switch"] = clearing_read.state

        self._learn_offsets(candidates, banks, clearing)
        offsets = self.clock_offsets  # the ages below are measured on each service's clock

        # 3. confirm balance suspicions with a second look
        if CheckStatus.VIOLATED in (balance.drift.status, balance.conservation.status):
            wait = min(self.config.confirm_delay_seconds, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)
            second = self._balance_pass(accounts, deadline, ledger_ok=True)
            balance = _confirmed(balance, second)
        results[c.BALANCE_DRIFT] = balance.drift
        results[c.CONSERVATION] = balance.conservation

        # 4. the other checks
        results[c.RESERVED_BOUNDS] = self._reserved_bounds(balance, banks, bank_futures)
        results[c.RESERVED_MATCHES_PENDING] = self._reserved_matches(banks, bank_futures)
        results[c.STATUS_AGREEMENT] = self._status_agreement(
            candidates, ledger_state, banks, clearing, bank_futures, clearing_future)
        configured = self._configured_services()
        stats = {b: s.outbox for b, s in banks.items()}
        missing = {b: s.missing_outbox for b, s in banks.items()}
        stale = {b: s.stale for b, s in banks.items()}
        if clearing is not None:
            stats["clearing"] = clearing.outbox
            missing["clearing"] = clearing.missing_outbox
            stale["clearing"] = clearing.stale
        if configured:
            results[c.OUTBOX_BACKLOG] = c.outbox_backlog(
                stats, naive_now, self.config.outbox_max_pending,
                self.config.outbox_max_age_seconds, configured, offsets)
            results[c.OUTBOX_INTEGRITY] = c.outbox_integrity(missing, configured)
            results[c.STALE_PENDING] = c.stale_pending(
                stale, naive_now, self.config.sla_seconds, configured,
                clearing.mappings if clearing is not None else None, offsets)
        else:
            for name in (c.OUTBOX_BACKLOG, c.OUTBOX_INTEGRITY, c.STALE_PENDING):
                results[name] = CheckResult.skipped(name, "no BGMock database configured")
        for result in results.values():
            if result.status is CheckStatus.UNKNOWN and not result.reason:
                result.reason = "data source unavailable"
        return Report(ran_at, time.monotonic() - started, results, sources, self.clock_offsets)

    # --- pieces ----------------------------------------------------------------------------
    def _learn_offsets(self, candidates: Sequence[FinishedPayment],
                       banks: Mapping[str, BankSnapshot],
                       clearing: ClearingSnapshot | None) -> None:
        """Estimate each service's clock offset from the rows of the payments whose
        statuses were just read (found by id, so whatever the offset)."""
        samples: dict[str, list[tuple[datetime, datetime]]] = {}
        for payment in candidates:
            if payment.intended_at is None:
                continue
            found: list[tuple[str, datetime | None]] = []
            for bank, snapshot in banks.items():
                found.append((bank, snapshot.created_at.get(payment.transaction_id)))
            if clearing is not None:
                found.append(("clearing", clearing.created_at.get(payment.transaction_id)))
            for service, created_at in found:
                if created_at is not None:
                    samples.setdefault(service, []).append((created_at, payment.intended_at))
        for service, pairs in samples.items():
            offset = clock_offset(pairs)
            if offset is not None:
                self._offsets[service] = offset

    def _configured_services(self) -> list[str]:
        return [s for s, db in DB_OF_SERVICE.items() if db in self.engines]

    def _ledger_prelude(self, now: datetime, deadline: float) -> tuple[
            list[FinishedPayment], set[AccountKey], str]:
        accounts = set(self._safe_twin_accounts()) | self._known_accounts
        if self.ledger is None:
            return [], accounts, "not configured"
        until = now - STATUS_GRACE
        since = self._status_watermark or (now - self.config.status_lookback)
        ledger = self.ledger

        def read() -> tuple[list[tuple[datetime, FinishedPayment]], set[AccountKey]]:
            finished = ledger.finished_between(since, until, STATUS_BATCH)
            return finished, ledger.deposit_accounts()

        got = _outcome(self._reads.submit("ledger", read), deadline)
        if got.value is None:
            return list(self._status_hold.values()), accounts, got.state
        finished, deposit_accounts = got.value
        accounts |= deposit_accounts
        self._known_accounts |= deposit_accounts
        if finished:
            self._status_watermark = finished[-1][0] if len(finished) >= STATUS_BATCH else until
        else:
            self._status_watermark = until
        fresh = {p.payment_id: p for _, p in finished}
        candidates = {**self._status_hold, **fresh}
        return list(candidates.values()), accounts, "ok"

    def _safe_twin_accounts(self) -> list[AccountKey]:
        try:
            return list(self.twin_accounts())
        except Exception as exc:
            log.debug("twin_accounts_unavailable", error=repr(exc))
            return []

    def _balance_pass(self, accounts: set[AccountKey], deadline: float,
                      ledger_ok: bool) -> _BalancePass:
        """Read the twin's balances (with the banks' journals, or through REST), then
        the ledger snapshot, then compare."""
        sources: dict[str, str] = {}
        read_started = self.now()
        window_start = read_started - JOURNAL_WINDOW
        naive_start = window_start.astimezone(UTC).replace(tzinfo=None)
        used = {bank: self._offsets.get(bank, timedelta(0)) for bank in BANKS}
        readings, banks_read, ordered, books = self._read_balances(
            accounts, deadline, sources, {bank: naive_start + used[bank] for bank in BANKS})
        snapshot: LedgerSnapshot | None = None
        if self.ledger is not None and ledger_ok:
            ledger = self.ledger
            changed_since = read_started - CHANGED_MARGIN

            def read_snapshot() -> LedgerSnapshot:
                return ledger.snapshot(changed_since, flush_timeout=1.0,
                                       detail_since=window_start - JOURNAL_SKEW)

            got = _outcome(self._reads.submit("ledger_snapshot", read_snapshot), deadline)
            snapshot = got.value
            sources["ledger_snapshot"] = got.state
        if snapshot is None:
            reason = "ledger unavailable" if self.ledger is not None else "no ledger"
            return _BalancePass(readings, banks_read, CheckResult.unknown(c.BALANCE_DRIFT, reason),
                                CheckResult.unknown(c.CONSERVATION, reason), sources)
        self._known_accounts |= snapshot.accounts
        absent_since: dict[str, datetime] = {}
        intended = {info.transaction_id: info.intended_at for info in snapshot.meta.values()
                    if info.transaction_id is not None}
        for bank, bank_books in books.items():
            rows = [*bank_books.outgoing.items(), *bank_books.incoming.items()]
            estimate = clock_offset((row[2], intended[tx]) for tx, row in rows
                                    if row[2] is not None and tx in intended)
            if estimate is not None:
                self._offsets[bank] = estimate
            else:
                estimate = self._offsets.get(bank)
            if estimate is None:
                continue  # the bank's clock is not known yet: absence proves nothing
            # the window began at ``used`` on the bank's clock: rows of payments sent
            # after this are surely in it
            absent_since[bank] = window_start + JOURNAL_SKEW + max(timedelta(0),
                                                                   used[bank] - estimate)
        payments = with_views(snapshot.payments, snapshot.meta, books, absent_since)
        model = expect(accounts | snapshot.accounts, snapshot.deposits, payments,
                       READ_ORDER if ordered else None)
        return _BalancePass(
            readings, banks_read,
            c.balance_drift(model, readings, banks_read),
            c.conservation(model, readings),
            sources,
        )

    def _read_balances(self, accounts: set[AccountKey], deadline: float,
                       sources: dict[str, str], since: Mapping[str, datetime]) -> tuple[
            dict[AccountKey, AccountReading | None], list[str], bool, dict[str, BankBooks]]:
        """Each bank from its database (balances with the journal) when configured,
        else - or when that fails - through REST, Bank A before Bank B."""
        readings: dict[AccountKey, AccountReading | None] = {}
        banks_read: list[str] = []
        books: dict[str, BankBooks] = {}
        futures: dict[str, Future[BankBooks]] = {}
        for bank in READ_ORDER:
            engine = self.engines.get(DB_OF_SERVICE[bank])
            if engine is not None:
                numbers = [a.number for a in accounts if a.bank == bank]
                futures[bank] = self._reads.submit(
                    f"{DB_OF_SERVICE[bank]}_books", _bind_books(
                        engine, bank, numbers, since[bank], self.config.statement_timeout_ms))
        for bank, future in futures.items():
            got = _outcome(future, deadline)
            sources[f"{DB_OF_SERVICE[bank]}_books"] = got.state
            if got.value is not None:
                books[bank] = got.value
                readings.update(got.value.accounts)
                banks_read.append(bank)
        rest_banks = [bank for bank in READ_ORDER if bank not in books]
        ordered = False
        if rest_banks and self.clients is not None:
            clients = self.clients
            timeout = max(0.2, min(self.config.rest_timeout_seconds,
                                   self.config.budget_seconds / 4))

            def rest() -> Any:
                return read_rest_accounts(clients, accounts, rest_banks, timeout)

            got_rest = _outcome(self._reads.submit("rest_accounts", rest), deadline)
            rest_result = got_rest.value
            if rest_result is not None:
                readings.update(rest_result.readings)
                banks_read.extend(rest_result.banks_read)
                ordered = not books and rest_result.banks_read == list(READ_ORDER)
                for bank in rest_banks:
                    sources[f"rest_{bank}"] = "ok" if bank in rest_result.banks_read else \
                        f"error: {rest_result.errors.get(bank, 'not read')}"
            else:
                sources["rest_accounts"] = got_rest.state
        return readings, banks_read, ordered, books

    def _reserved_bounds(self, balance: _BalancePass, banks: Mapping[str, BankSnapshot],
                         futures: Mapping[str, Future[BankSnapshot]]) -> CheckResult:
        readings: list[AccountReading] = [r for r in balance.readings.values() if r is not None]
        for snapshot in banks.values():
            readings.extend(snapshot.out_of_bounds)
        result = c.reserved_bounds(readings)
        unread = [b for b in futures if b not in banks]
        if not balance.banks_read and not banks:
            return CheckResult.unknown(c.RESERVED_BOUNDS, "no account could be read")
        if unread and result.status is CheckStatus.OK:
            result.status = CheckStatus.UNKNOWN
            result.reason = f"not read: {', '.join(DB_OF_SERVICE[b] for b in unread)}"
        return result

    def _reserved_matches(self, banks: Mapping[str, BankSnapshot],
                          futures: Mapping[str, Future[BankSnapshot]]) -> CheckResult:
        if not futures:
            return CheckResult.skipped(c.RESERVED_MATCHES_PENDING, "no bank database configured")
        mismatches = [m for s in banks.values() for m in s.pending_mismatches]
        result = c.reserved_matches_pending(mismatches, self._pending_diffs)
        for bank in banks:
            for account in [a for a in self._pending_diffs if a.bank == bank]:
                del self._pending_diffs[account]
        for m in mismatches:
            self._pending_diffs[m.account] = m.difference
        unread = [b for b in futures if b not in banks]
        if unread and result.status is CheckStatus.OK:
            result.status = CheckStatus.UNKNOWN
            result.reason = f"not read: {', '.join(DB_OF_SERVICE[b] for b in unread)}"
        return result

    def _status_agreement(
        self,
        candidates: Sequence[FinishedPayment],
        ledger_state: str,
        banks: Mapping[str, BankSnapshot],
        clearing: ClearingSnapshot | None,
        bank_futures: Mapping[str, Future[BankSnapshot]],
        clearing_future: Future[ClearingSnapshot] | None,
    ) -> CheckResult:
        if self.ledger is None:
            return CheckResult.skipped(c.STATUS_AGREEMENT, "no ledger")
        if len(bank_futures) < len(BANKS) or clearing_future is None:
            return CheckResult.skipped(c.STATUS_AGREEMENT,
                                       "needs DB_BANK_A, DB_BANK_B and DB_SWITCH")
        if ledger_state != "ok":
            return CheckResult.unknown(c.STATUS_AGREEMENT, f"ledger {ledger_state}")
        statuses: dict[str, Mapping[uuid.UUID, str]] = {}
        for bank, snapshot in banks.items():
            statuses[f"{bank}:outgoing"] = snapshot.outgoing_status
            statuses[f"{bank}:incoming"] = snapshot.incoming_status
        if clearing is not None:
            statuses["clearing"] = clearing.status
        result = c.status_agreement(candidates, statuses)
        offending = {v.evidence["payment_id"] for v in result.violations}
        complete = set(statuses) == {"clearing", *(f"{b}:{t}" for b in BANKS
                                                   for t in ("outgoing", "incoming"))}
        if not complete and result.status is CheckStatus.OK:  # even with nothing to compare
            unread = [DB_OF_SERVICE[b] for b in BANKS if b not in banks]
            unread += [] if clearing is not None else ["db_switch"]
            result.status = CheckStatus.UNKNOWN
            result.reason = f"not read: {', '.join(unread)}"
        hold = {p.payment_id: p for p in candidates
                if p.payment_id in offending or not complete}
        if len(hold) > STATUS_HOLD_LIMIT:
            hold = dict(list(hold.items())[-STATUS_HOLD_LIMIT:])
        self._status_hold = hold
        return result


def _confirmed(first: _BalancePass, second: _BalancePass) -> _BalancePass:
    """Keep only the balance violations seen on both looks (with the second look's
    evidence); the second look decides what is ok or unknown."""
    def both(a: CheckResult, b: CheckResult) -> CheckResult:
        if b.status is not CheckStatus.VIOLATED:
            return b
        keys = {v.key for v in a.violations}
        kept = [v for v in b.violations if v.key in keys]
        if kept:
            return CheckResult(b.check, CheckStatus.VIOLATED, kept, b.reason, b.detail)
        return CheckResult(b.check, CheckStatus.OK, [], None, b.detail)

    drift = both(first.drift, second.drift)
    if drift.status is CheckStatus.OK and second.drift.status is CheckStatus.VIOLATED:
        # the unconfirmed drift does not count in the gauges either
        detail = dict(drift.detail)
        detail["drift"] = {bank: "0" for bank in detail.get("drift", {})}
        detail["drifting_accounts"] = {bank: 0 for bank in detail.get("drifting_accounts", {})}
        drift.detail = detail
    elif drift.status is CheckStatus.VIOLATED:
        drift.detail = _drift_detail(drift)
    return _BalancePass(second.readings, second.banks_read, drift,
                        both(first.conservation, second.conservation),
                        {**first.sources, **{f"confirm_{k}": v for k, v in second.sources.items()}})


def _drift_detail(result: CheckResult) -> dict[str, Any]:
    """Per-bank drift figures recomputed from the confirmed violations only."""
    drift = {bank: Decimal("0") for bank in result.detail.get("drift", {})}
    count = {bank: 0 for bank in result.detail.get("drifting_accounts", {})}
    for violation in result.violations:
        bank = violation.evidence["bank"]
        amount = violation.evidence.get("drift")
        if amount is None:  # a missing account
            expected = violation.evidence["expected"]
            amount = max(abs(Decimal(expected["min"])), abs(Decimal(expected["max"])))
        drift[bank] = drift.get(bank, Decimal("0")) + Decimal(amount)
        count[bank] = count.get(bank, 0) + 1
    return {**result.detail, "drift": {b: c.money(v) for b, v in drift.items()},
            "drifting_accounts": count}


def _bind_bank(engine: Engine, bank: str, ids_out: list[uuid.UUID], ids_in: list[uuid.UUID],
               cutoff: datetime, timeout_ms: int) -> Callable[[], BankSnapshot]:
    def read() -> BankSnapshot:
        return read_bank_db(engine, bank, ids_out, ids_in, cutoff, timeout_ms)

    return read


def _bind_clearing(engine: Engine, ids: list[uuid.UUID], cutoff: datetime,
                   timeout_ms: int) -> Callable[[], ClearingSnapshot]:
    def read() -> ClearingSnapshot:
        return read_clearing_db(engine, ids, (), cutoff, timeout_ms)

    return read


def _bind_books(engine: Engine, bank: str, numbers: list[str], since: datetime,
                timeout_ms: int) -> Callable[[], BankBooks]:
    def read() -> BankBooks:
        return read_bank_books(engine, bank, numbers, since, timeout_ms)

    return read
