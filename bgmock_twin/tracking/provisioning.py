"""The twin's test fixtures inside BGMock: its own accounts and bankgood numbers.

Names are stable and recognisable (``TWIN-A-001``, bankgood ``TWIN-BG-A-001``; the
prefix is ``TWIN_ACCOUNT_PREFIX``) so a restarted twin, or another replica, finds
and reuses them. Rules:

- look up before creating: BGMock answers 500, not 409, for a duplicate;
- an account is the twin's only if its holder is ``HOLDER``; one with a twin name
  but another holder, or a bankgood number mapped elsewhere, is left alone and not
  used - the twin never touches what it did not create;
- deliberate failures get dedicated fixtures so they never disturb the others:
  an empty ``-LOW`` account per bank (insufficient funds), a bankgood number that
  is verified *not* to be registered (unknown bankgood), and a bankgood number
  mapped to a ``-GHOST`` account that is verified not to exist (unknown payee);
- payer accounts are topped up to the initial deposit once their available
  balance falls below half of it. Every deposit is recorded in the ledger so the
  books can tell deposits from payments;
- an account the twin created in an earlier life but that this ledger knows nothing
  about (no deposit, no payment: a fresh SQLite file after a pod restart) gets its
  current balance recorded as an ``opening`` deposit, so the books start from what
  the bank holds instead of showing it all as drift.

Replicas. Each replica of a fleet (replicas on one PostgreSQL ledger; a twin on an
SQLite ledger is alone and keeps the plain prefix) owns its accounts: the prefix carries the
replica's ordinal (``replica_account_prefix``: the StatefulSet pod ``<name>-2``
uses ``TWIN-R2-A-001``; ordinal 0 and an instance id without one keep the plain
``TWIN-A-001``, so a lone twin keeps its accounts). Its payers are then its own,
which keeps each in-flight (payer, bankgood, amount) triple unique across the fleet
(``rematch``), and no replica adopts, tops up or opens what another is paying
from. Replicas that share an account set anyway (instance ids without ordinals,
one ``TWIN_ACCOUNT_PREFIX``) stay exact: a provisioning pass runs under the set's
lease in the ledger (``exclusive``) and stores its deposits before handing it on,
so the next replica finds the accounts known instead of adopting them a second
time; and an opening has one id per account (``opening_deposit_id``), so two
openings of one account are one row.

Opening balances and reservations. For the books a deposit is *balance* (the model
adds it to the expected balance; the reserved amount is never derived from
deposits, and the ``reserved_*`` checks read only the banks). A reservation at
adoption belongs to a payment of the earlier life that the new ledger does not
know: recording the balance while it is held would be wrong once it settles (the
source loses the amount, and a payee among the twin's accounts may still gain it),
recording the available amount would be wrong until then, and forever if it is
released. So the opening is recorded only once the adopted accounts are *quiet*:
no reservation on any of them in two consecutive reads, the balances taken from
the second (every payment between them then settled before it, credit included).
The first pass waits up to ``quiet_wait_seconds`` for that (a healthy payment
finishes within seconds); meanwhile, and on later passes if need be, the accounts
are held back: not offered to the sender and not topped up, so nothing of this
life mixes with the unknown old payments. A reservation that lasts
``stuck_after_seconds`` (the payment SLA) belongs to a payment the twin would count
stuck - BGMock never times one out - so the account is adopted with its balance
then, the money still reserved is taken as staying where it is. Payments of the
earlier life on the Kafka channel reserve nothing and cannot be waited for.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from bgmock_twin.clients.bgmock import Account, BankClient, BankMapping, BGMockClients
from bgmock_twin.contract import BANKS, Bank, bank_by_clearing
from bgmock_twin.logs import get_logger
from bgmock_twin.tracking.ledger import OPENING

log = get_logger(__name__)

HOLDER = "bgmock-twin"
SPARE_NAMES = 5
QUIET_POLL_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Payee:
    account_number: str
    bankgood_number: str


@dataclass
class Fixtures:
    """What the sender may use, per clearing number."""

    payers: dict[str, list[str]] = field(default_factory=dict)
    payees: dict[str, list[Payee]] = field(default_factory=dict)
    low_accounts: dict[str, str] = field(default_factory=dict)
    low_available: dict[str, Decimal] = field(default_factory=dict)
    ghost_payees: dict[str, Payee] = field(default_factory=dict)
    unknown_bankgood: str | None = None
    # adopted accounts held back until their opening balance can be recorded
    awaiting_opening: dict[str, list[str]] = field(default_factory=dict)

    def complete(self) -> bool:
        return all(self.payers.get(bank.clearing_number) and self.payees.get(bank.clearing_number)
                   for bank in BANKS)


DepositRecorder = Callable[[str, str, Decimal, str], None]
HistoryCheck = Callable[[str, str], bool]  # (clearing, account): the ledger knows it
Exclusive = Callable[[], AbstractContextManager[None]]  # one pass at a time on an account set
_TwinAccount = tuple[str, str]  # (clearing number, account number) of a twin account


def _bank(clearing: str) -> Bank:
    bank = bank_by_clearing(clearing)
    if bank is None:
        raise KeyError(f"no BGMock bank has clearing number {clearing!r}")
    return bank


def _bank_name(bank: Bank) -> str:
    """The bank name the twin's clearing mappings carry ("Bank A")."""
    return f"Bank {bank.letter}"


class Provisioner:
    def __init__(
        self,
        clients: BGMockClients,
        prefix: str,
        accounts_per_bank: int,
        initial_deposit: Decimal,
        record_deposit: DepositRecorder | None = None,
        has_history: HistoryCheck | None = None,
        quiet_wait_seconds: float = 10.0,
        stuck_after_seconds: float = 30.0,
        exclusive: Exclusive | None = None,
    ) -> None:
        """Opening balances are recorded only with both ``record_deposit`` and
        ``has_history`` (the ledger's ``has_history``); ``exclusive`` guards each
        provisioning pass against another replica's on the same accounts."""
        self.clients = clients
        self.prefix = prefix
        self.accounts_per_bank = accounts_per_bank
        self.initial_deposit = initial_deposit
        self.record_deposit = record_deposit
        self.has_history = has_history
        self.quiet_wait_seconds = quiet_wait_seconds
        self.stuck_after_seconds = stuck_after_seconds
        self.exclusive: Exclusive = exclusive or contextlib.nullcontext
        self._lock = threading.Lock()
        # accounts whose starting point the ledger holds (created, found in the
        # ledger or opened in this life): never looked up again
        self._settled: set[_TwinAccount] = set()
        self._held_since: dict[_TwinAccount, float] = {}
        self._fixtures: Fixtures | None = None
        self.last_error: str | None = None
        self.provisioned_at: datetime | None = None

    # --- names ------------------------------------------------------------------------------
    def account_name(self, clearing: str, n: int) -> str:
        return f"{self.prefix}-{_bank(clearing).letter}-{n:03d}"

    def bankgood_name(self, clearing: str, n: int) -> str:
        return f"{self.prefix}-BG-{_bank(clearing).letter}-{n:03d}"

    @property
    def fixtures(self) -> Fixtures | None:
        return self._fixtures

    # --- provisioning -----------------------------------------------------------------------
    def provision(self) -> Fixtures:
        """Create what is missing, reuse what exists, top up what runs low.

        Raises ``ServiceError`` when BGMock cannot be reached; the previous fixtures
        (if any) stay in use.
        """
        with self._lock, self.exclusive():
            fixtures = Fixtures()
            owned: dict[_TwinAccount, Account] = {}
            for clearing in (b.clearing_number for b in BANKS):
                bank = self.clients.bank(clearing)
                for name in [*(self.account_name(clearing, n)
                               for n in range(1, self.accounts_per_bank + 1)),
                             self._low_name(clearing)]:
                    account = self._own(bank, name)
                    if account is not None:
                        owned[(clearing, name)] = account
            held = self._open_adopted(owned)
            for clearing in (b.clearing_number for b in BANKS):
                bank = self.clients.bank(clearing)
                payers: list[str] = []
                payees: list[Payee] = []
                for n in range(1, self.accounts_per_bank + 1):
                    number = self.account_name(clearing, n)
                    if (clearing, number) not in owned:
                        continue
                    payee = Payee(number, self.bankgood_name(clearing, n))
                    mapped = self._ensure_mapping(payee.bankgood_number, clearing, number)
                    if (clearing, number) in held:
                        fixtures.awaiting_opening.setdefault(clearing, []).append(number)
                        continue
                    self._fund(bank, owned[(clearing, number)], self.initial_deposit)
                    payers.append(number)
                    if mapped:
                        payees.append(payee)
                fixtures.payers[clearing] = payers
                fixtures.payees[clearing] = payees
                low = self._low_name(clearing)
                low_account = owned.get((clearing, low))
                if (clearing, low) in held:
                    fixtures.awaiting_opening.setdefault(clearing, []).append(low)
                elif low_account is not None:
                    fixtures.low_accounts[clearing] = low
                    fixtures.low_available[clearing] = low_account.available
                ghost = self._ghost(bank, clearing)
                if ghost is not None:
                    fixtures.ghost_payees[clearing] = ghost
            fixtures.unknown_bankgood = self._unknown_bankgood()
            self._fixtures = fixtures
            self.last_error = None
            self.provisioned_at = datetime.now(UTC)
            return fixtures

    def _low_name(self, clearing: str) -> str:
        return f"{self.prefix}-{_bank(clearing).letter}-LOW"

    def _ensure_account(self, bank: BankClient, number: str, target: Decimal) -> Account | None:
        """The twin's account ``number`` (created if missing, topped up to ``target``),
        or None when the name belongs to someone else."""
        account = self._own(bank, number)
        return None if account is None else self._fund(bank, account, target)

    def _own(self, bank: BankClient, number: str) -> Account | None:
        """The twin's account ``number``, created if missing; None when the name
        belongs to someone else."""
        account = bank.get_account(number)
        if account is None:
            account = bank.create_account(number, HOLDER, Decimal("0"))
            self._settled.add((bank.clearing_number, number))  # starts at zero, in this life
            log.info("twin_account_created", bank=bank.service, account=number)
        elif account.account_holder != HOLDER:
            log.warning("twin_account_name_taken", bank=bank.service, account=number)
            return None
        return account

    def _fund(self, bank: BankClient, account: Account, target: Decimal) -> Account:
        """Top ``account`` up to ``target`` once its available balance is below half."""
        number = account.account_number
        if target > 0 and account.available < target / 2:
            amount = target - account.available
            account = bank.deposit(number, amount)
            if self.record_deposit is not None:
                self.record_deposit(bank.clearing_number, number, amount,
                                    "initial" if account.balance == amount else "top_up")
            log.info("twin_account_funded", bank=bank.service, account=number,
                     amount=format(amount, "f"))
        return account

    # --- opening balances -------------------------------------------------------------------
    def _open_adopted(self, owned: dict[_TwinAccount, Account]) -> set[_TwinAccount]:
        """Record the opening balance of every adopted account the ledger knows
        nothing about, once they are quiet (module docstring); ``owned`` gets the
        readings the openings were taken from. Returns the accounts held back."""
        if self.record_deposit is None or self.has_history is None:
            return set()
        adopted: dict[_TwinAccount, Account] = {}
        for key, account in owned.items():
            if key in self._settled:
                continue
            try:
                known = self.has_history(*key)
            except Exception as exc:
                # the ledger cannot tell: use the account as before rather than stop the
                # canary; only a ledger both lost and down at start is left without one
                log.warning("opening_balance_unknown", clearing=key[0], account=key[1],
                            error=str(exc)[:200])
                known = True
            if known:
                self._settled.add(key)
            else:
                adopted[key] = account
        if not adopted:
            return set()
        quiet, readings = self._await_quiet(adopted)
        now = time.monotonic()
        if not quiet:
            for key in adopted:
                self._held_since.setdefault(key, now)
            waited = min(now - self._held_since[key] for key in adopted)
            reserved = {f"{clearing}/{number}": format(a.reserved_balance, "f")
                        for (clearing, number), a in readings.items()
                        if a is not None and a.reserved_balance}
            if waited < self.stuck_after_seconds:
                log.info("twin_accounts_awaiting_opening", accounts=len(adopted),
                         reserved=reserved, waited_seconds=round(waited, 1))
                return set(adopted)
            log.warning("twin_accounts_opened_with_reservations", reserved=reserved,
                        waited_seconds=round(waited, 1))
        held: set[_TwinAccount] = set()
        for key, reading in readings.items():
            if reading is None:  # deleted meanwhile: recreated (from zero) next pass
                held.add(key)
                continue
            if reading.balance:
                assert self.record_deposit is not None
                self.record_deposit(key[0], key[1], reading.balance, OPENING)
            log.info("twin_account_adopted", clearing=key[0], account=key[1],
                     balance=format(reading.balance, "f"),
                     reserved=format(reading.reserved_balance, "f"))
            self._settled.add(key)
            self._held_since.pop(key, None)
            owned[key] = reading
        return held

    def _await_quiet(self, accounts: dict[_TwinAccount, Account]) -> tuple[
            bool, dict[_TwinAccount, Account | None]]:
        """Read the accounts again until two reads in a row show no reservation on any
        of them (True and the second read) or ``quiet_wait_seconds`` pass (False and
        the last read)."""
        deadline = time.monotonic() + self.quiet_wait_seconds
        readings: dict[_TwinAccount, Account | None] = dict(accounts)
        quiet_before = _quiet(readings)
        while True:
            if not quiet_before:
                if time.monotonic() >= deadline:
                    return False, readings
                time.sleep(QUIET_POLL_SECONDS)
            readings = {key: self.clients.bank(key[0]).get_account(key[1]) for key in readings}
            if quiet_before and _quiet(readings):
                return True, readings
            quiet_before = _quiet(readings)

    def _ensure_mapping(self, bankgood: str, clearing: str, account: str) -> bool:
        mapping = self.clients.clearing.get_mapping(bankgood)
        if mapping is None:
            self.clients.clearing.create_mapping(
                BankMapping(bankgood, clearing, account, _bank_name(_bank(clearing))))
            log.info("twin_mapping_created", bankgood=bankgood, clearing=clearing)
            return True
        if mapping.clearing_number != clearing or mapping.account_number != account:
            log.warning("twin_bankgood_taken", bankgood=bankgood)
            return False
        return True

    def _ghost(self, bank: BankClient, clearing: str) -> Payee | None:
        """A registered bankgood number whose account does not exist at the bank."""
        letter = _bank(clearing).letter
        for k in range(SPARE_NAMES):
            suffix = "" if k == 0 else f"-{k}"
            account = f"{self.prefix}-{letter}-GHOST{suffix}"
            if bank.get_account(account) is not None:
                continue  # someone created it: it cannot stand for a missing account
            bankgood = f"{self.prefix}-BG-{letter}-GHOST{suffix}"
            if self._ensure_mapping(bankgood, clearing, account):
                return Payee(account, bankgood)
        log.warning("twin_ghost_payee_unavailable", bank=bank.service)
        return None

    def _unknown_bankgood(self) -> str | None:
        for k in range(SPARE_NAMES):
            bankgood = f"{self.prefix}-BG-NONE" + ("" if k == 0 else f"-{k}")
            if self.clients.clearing.get_mapping(bankgood) is None:
                return bankgood
        log.warning("twin_unknown_bankgood_unavailable")
        return None

    def top_up(self) -> None:
        """Refill payer accounts that run low (scheduled)."""
        fixtures = self._fixtures
        if fixtures is None:
            return
        with self._lock:
            for clearing, numbers in fixtures.payers.items():
                bank = self.clients.bank(clearing)
                for number in numbers:
                    self._ensure_account(bank, number, self.initial_deposit)


def _quiet(readings: dict[_TwinAccount, Account | None]) -> bool:
    """No reservation on any account (a missing account holds none)."""
    return all(a is None or a.reserved_balance == 0 for a in readings.values())


_ORDINAL = re.compile(r"-([0-9]{1,4})$")
_OPENING_IDS = uuid.UUID("5b0c5f7e-7d43-4f0e-9a51-6f3c2b9d1e21")


def replica_account_prefix(prefix: str, instance_id: str) -> str:
    """The account prefix of the replica ``instance_id``: ``prefix`` itself for
    ordinal 0 or an instance id without an ordinal, ``<prefix>-R<n>`` for the
    StatefulSet pod ``<name>-<n>`` (n > 0). A bank letter is never ``R1``, so the
    sets of two replicas never share a name."""
    found = _ORDINAL.search(instance_id)
    ordinal = int(found.group(1)) if found else 0
    return prefix if ordinal == 0 else f"{prefix}-R{ordinal}"


def opening_deposit_id(clearing: str, account: str) -> str:
    """The one id an account's opening balance has in a ledger: the ledger records an
    opening only for an account it knows nothing about, so there is at most one, and
    two replicas recording it at once write one row."""
    return str(uuid.uuid5(_OPENING_IDS, f"{clearing}/{account}"))


def new_deposit_row(instance_id: str, clearing: str, account: str, amount: Decimal,
                    reason: str) -> dict[str, object]:
    deposit_id = opening_deposit_id(clearing, account) if reason == OPENING \
        else str(uuid.uuid4())
    return {
        "deposit_id": deposit_id, "instance_id": instance_id,
        "clearing_number": clearing, "account_number": account, "amount": amount,
        "reason": reason, "at": datetime.now(UTC),
    }
