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

Every read has a deadline (``reads``). A read that misses it, or fails, makes the
checks that need it ``unknown``.

Balances come from a bank's database when it is configured, read in one snapshot
with the bank's journal of the twin's accounts, which pins every recent payment to
where it stood at that bank (``journal``: exact expectations even under load);
otherwise from REST, where unfinished payments leave ranges.

A balance suspicion is confirmed before it is reported: the balance reads and the
model are done once more a moment later, and only drift seen both times counts
(``report.confirmed``: a deposit recorded a moment after the bank applied it is
not drift).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Engine

from bgmock_twin.books import checks as c
from bgmock_twin.books import snapshot_checks
from bgmock_twin.books.accounts import AccountsView, account_lines
from bgmock_twin.books.journal import clock_offset, learn_offsets, with_views
from bgmock_twin.books.model import AccountKey, expect
from bgmock_twin.books.readings import AccountReading, FinishedPayment
from bgmock_twin.books.reads import Reads, bind_bank, bind_books, bind_clearing, outcome
from bgmock_twin.books.report import BalancePass, Report, confirmed
from bgmock_twin.books.rest import read_rest_accounts
from bgmock_twin.books.results import CheckResult, CheckStatus
from bgmock_twin.books.snapshot_checks import database_of, ledger_reason
from bgmock_twin.books.sources import LedgerBehind, LedgerReader, LedgerSnapshot
from bgmock_twin.books.sql import BankBooks, BankSnapshot, ClearingSnapshot
from bgmock_twin.clients.bgmock import BGMockClients
from bgmock_twin.contract import BANK_A, BANK_B, BANKS, CLEARING, SERVICES, Channel
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

READ_ORDER = (BANK_A.name, BANK_B.name)
CHANGED_MARGIN = timedelta(seconds=1)  # clock slack when comparing ledger write times
STATUS_GRACE = timedelta(seconds=2)  # a finished payment's rows settle everywhere first
STATUS_BATCH = 2000
CONFIRM_DELAY_SECONDS = 1.0
JOURNAL_WINDOW = timedelta(minutes=5)  # journal rows read with the balances
JOURNAL_SKEW = timedelta(minutes=1)  # clock difference tolerated between twin and banks
LEDGER_FLUSH_SECONDS = 1.0  # how long a read waits for the ledger to store what it holds


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
        self._reads = Reads()
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
        ids_out: dict[str, list[uuid.UUID]] = {b.name: [] for b in BANKS}
        ids_in: dict[str, list[uuid.UUID]] = {b.name: [] for b in BANKS}
        for payment in candidates:
            if payment.channel == Channel.REST and payment.source_service in ids_out:
                ids_out[payment.source_service].append(payment.transaction_id)
            if payment.destination_service in ids_in:
                ids_in[payment.destination_service].append(payment.transaction_id)
        for bank in BANKS:
            engine = self.engines.get(bank.database)
            if engine is not None:
                bank_futures[bank.name] = self._reads.submit(
                    bank.database, bind_bank(engine, bank.name, ids_out[bank.name],
                                             ids_in[bank.name], stale_cutoff(bank.name),
                                             self.config.statement_timeout_ms))
        clearing_future: Future[ClearingSnapshot] | None = None
        clearing_engine = self.engines.get(CLEARING.database)
        if clearing_engine is not None:
            clearing_future = self._reads.submit(CLEARING.database, bind_clearing(
                clearing_engine, [p.transaction_id for p in candidates],
                stale_cutoff(CLEARING.name), self.config.statement_timeout_ms))
        balance = self._balance_pass(accounts, deadline, ledger_state)
        sources.update(balance.sources)

        banks: dict[str, BankSnapshot] = {}
        for name, future in bank_futures.items():
            bank_read = outcome(future, deadline)
            sources[database_of(name)] = bank_read.state
            if bank_read.value is not None:
                banks[name] = bank_read.value
        clearing: ClearingSnapshot | None = None
        if clearing_future is not None:
            clearing_read = outcome(clearing_future, deadline)
            clearing = clearing_read.value
            sources[CLEARING.database] = clearing_read.state

        self._offsets.update(learn_offsets(candidates, banks, clearing))
        offsets = self.clock_offsets  # the ages below are measured on each service's clock

        # 3. confirm balance suspicions with a second look
        if CheckStatus.VIOLATED in (balance.drift.status, balance.conservation.status):
            wait = min(self.config.confirm_delay_seconds, max(0.0, deadline - time.monotonic()))
            time.sleep(wait)
            second = self._balance_pass(accounts, deadline, "ok")
            balance = confirmed(balance, second)
        results[c.BALANCE_DRIFT] = balance.drift
        results[c.CONSERVATION] = balance.conservation

        # 4. the other checks
        asked = list(bank_futures)
        results[c.RESERVED_BOUNDS] = snapshot_checks.reserved_bounds(balance, banks, asked)
        matches = snapshot_checks.reserved_matches(banks, asked, self._pending_diffs)
        self._pending_diffs = matches.differences
        results[c.RESERVED_MATCHES_PENDING] = matches.result
        if self.ledger is None:
            results[c.STATUS_AGREEMENT] = CheckResult.skipped(c.STATUS_AGREEMENT, "no ledger")
        else:
            agreement = snapshot_checks.status_agreement(
                candidates, ledger_state, banks, clearing, asked, clearing_future is not None,
                self._status_hold)
            self._status_hold = agreement.hold
            results[c.STATUS_AGREEMENT] = agreement.result
        configured = self._configured_services()
        stats = {b: s.outbox for b, s in banks.items()}
        missing = {b: s.missing_outbox for b, s in banks.items()}
        stale = {b: s.stale for b, s in banks.items()}
        if clearing is not None:
            stats[CLEARING.name] = clearing.outbox
            missing[CLEARING.name] = clearing.missing_outbox
            stale[CLEARING.name] = clearing.stale
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
        view = AccountsView(ran_at, tuple(balance.banks_read), balance.accounts) \
            if balance.accounts is not None else None
        return Report(ran_at, time.monotonic() - started, results, sources, self.clock_offsets,
                      view)

    # --- pieces ----------------------------------------------------------------------------
    def _configured_services(self) -> list[str]:
        return [s.name for s in SERVICES if s.database in self.engines]

    def _ledger_prelude(self, now: datetime, deadline: float) -> tuple[
            list[FinishedPayment], set[AccountKey], str]:
        accounts = set(self._safe_twin_accounts()) | self._known_accounts
        if self.ledger is None:
            return [], accounts, "not configured"
        until = now - STATUS_GRACE
        since = self._status_watermark or (now - self.config.status_lookback)
        ledger = self.ledger

        def read() -> tuple[list[tuple[datetime, FinishedPayment]], set[AccountKey]]:
            # rows the ledger could not store would be missed for good once the
            # watermark passed them: nothing is read while there are any
            ledger.ensure_current(LEDGER_FLUSH_SECONDS)
            finished = ledger.finished_between(since, until, STATUS_BATCH)
            return finished, ledger.deposit_accounts()

        got = outcome(self._reads.submit("ledger", read), deadline)
        if got.value is None:
            state = str(got.error) if isinstance(got.error, LedgerBehind) else got.state
            return list(self._status_hold.values()), accounts, state
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
                      ledger_state: str) -> BalancePass:
        """Read the twin's balances (with the banks' journals, or through REST), then
        the ledger snapshot, then compare. Unknown, never a violation, when the ledger
        could not be read or holds rows it has not stored (``ledger_state``)."""
        sources: dict[str, str] = {}
        read_started = self.now()
        window_start = read_started - JOURNAL_WINDOW
        naive_start = window_start.astimezone(UTC).replace(tzinfo=None)
        used = {bank: self._offsets.get(bank, timedelta(0)) for bank in READ_ORDER}
        readings, banks_read, ordered, books = self._read_balances(
            accounts, deadline, sources, {bank: naive_start + used[bank] for bank in READ_ORDER})
        snapshot: LedgerSnapshot | None = None
        reason = "no ledger" if self.ledger is None else ledger_reason(ledger_state)
        if self.ledger is not None and ledger_state == "ok":
            ledger = self.ledger
            changed_since = read_started - CHANGED_MARGIN

            def read_snapshot() -> LedgerSnapshot:
                return ledger.snapshot(changed_since, flush_timeout=LEDGER_FLUSH_SECONDS,
                                       detail_since=window_start - JOURNAL_SKEW)

            got = outcome(self._reads.submit("ledger_snapshot", read_snapshot), deadline)
            snapshot = got.value
            sources["ledger_snapshot"] = got.state
            reason = str(got.error) if isinstance(got.error, LedgerBehind) \
                else "ledger unavailable"
        if snapshot is None:
            return BalancePass(readings, banks_read, CheckResult.unknown(c.BALANCE_DRIFT, reason),
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
        return BalancePass(
            readings, banks_read,
            c.balance_drift(model, readings, banks_read),
            c.conservation(model, readings),
            sources,
            account_lines(model, readings, banks_read, payments,
                          {pid for pid, info in snapshot.meta.items() if not info.finished}),
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
            engine = self.engines.get(database_of(bank))
            if engine is not None:
                numbers = [a.number for a in accounts if a.bank == bank]
                futures[bank] = self._reads.submit(
                    f"{database_of(bank)}_books", bind_books(
                        engine, bank, numbers, since[bank], self.config.statement_timeout_ms))
        for bank, future in futures.items():
            got = outcome(future, deadline)
            sources[f"{database_of(bank)}_books"] = got.state
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

            got_rest = outcome(self._reads.submit("rest_accounts", rest), deadline)
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
