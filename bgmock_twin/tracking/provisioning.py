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
  books can tell deposits from payments.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from bgmock_twin.clients.bgmock import Account, BankClient, BankMapping, BGMockClients
from bgmock_twin.contract import BANK_A_CLEARING, BANK_B_CLEARING
from bgmock_twin.logs import get_logger

log = get_logger(__name__)

HOLDER = "bgmock-twin"
BANK_LETTER = {BANK_A_CLEARING: "A", BANK_B_CLEARING: "B"}
BANK_NAMES = {BANK_A_CLEARING: "Bank A", BANK_B_CLEARING: "Bank B"}
SPARE_NAMES = 5


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

    def complete(self) -> bool:
        return all(self.payers.get(c) and self.payees.get(c) for c in BANK_LETTER)

    def as_dict(self) -> dict[str, object]:
        return {
            "payers": self.payers,
            "payees": {c: [p.account_number for p in ps] for c, ps in self.payees.items()},
            "lowAccounts": self.low_accounts,
            "ghostPayees": {c: p.bankgood_number for c, p in self.ghost_payees.items()},
            "unknownBankgood": self.unknown_bankgood,
        }


DepositRecorder = Callable[[str, str, Decimal, str], None]


class Provisioner:
    def __init__(
        self,
        clients: BGMockClients,
        prefix: str,
        accounts_per_bank: int,
        initial_deposit: Decimal,
        record_deposit: DepositRecorder | None = None,
    ) -> None:
        self.clients = clients
        self.prefix = prefix
        self.accounts_per_bank = accounts_per_bank
        self.initial_deposit = initial_deposit
        self.record_deposit = record_deposit
        self._lock = threading.Lock()
        self._fixtures: Fixtures | None = None
        self.last_error: str | None = None
        self.provisioned_at: datetime | None = None

    # --- names ------------------------------------------------------------------------------
    def account_name(self, clearing: str, n: int) -> str:
        return f"{self.prefix}-{BANK_LETTER[clearing]}-{n:03d}"

    def bankgood_name(self, clearing: str, n: int) -> str:
        return f"{self.prefix}-BG-{BANK_LETTER[clearing]}-{n:03d}"

    def is_twin_account(self, account_number: str) -> bool:
        return account_number.startswith(f"{self.prefix}-")

    @property
    def fixtures(self) -> Fixtures | None:
        return self._fixtures

    # --- provisioning -----------------------------------------------------------------------
    def provision(self) -> Fixtures:
        """Create what is missing, reuse what exists, top up what runs low.

        Raises ``ServiceError`` when BGMock cannot be reached; the previous fixtures
        (if any) stay in use.
        """
        with self._lock:
            fixtures = Fixtures()
            for clearing in BANK_LETTER:
                bank = self.clients.bank(clearing)
                payers: list[str] = []
                payees: list[Payee] = []
                for n in range(1, self.accounts_per_bank + 1):
                    number = self.account_name(clearing, n)
                    if self._ensure_account(bank, number, self.initial_deposit) is None:
                        continue
                    payers.append(number)
                    payee = Payee(number, self.bankgood_name(clearing, n))
                    if self._ensure_mapping(payee.bankgood_number, clearing, number):
                        payees.append(payee)
                fixtures.payers[clearing] = payers
                fixtures.payees[clearing] = payees
                low = f"{self.prefix}-{BANK_LETTER[clearing]}-LOW"
                low_account = self._ensure_account(bank, low, Decimal("0"))
                if low_account is not None:
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

    def _ensure_account(self, bank: BankClient, number: str, target: Decimal) -> Account | None:
        """The twin's account ``number`` (created if missing, topped up to ``target``),
        or None when the name belongs to someone else."""
        account = bank.get_account(number)
        if account is None:
            account = bank.create_account(number, HOLDER, Decimal("0"))
            log.info("twin_account_created", bank=bank.service, account=number)
        elif account.account_holder != HOLDER:
            log.warning("twin_account_name_taken", bank=bank.service, account=number)
            return None
        if target > 0 and account.available < target / 2:
            amount = target - account.available
            account = bank.deposit(number, amount)
            if self.record_deposit is not None:
                self.record_deposit(bank.clearing_number, number, amount,
                                    "initial" if account.balance == amount else "top_up")
            log.info("twin_account_funded", bank=bank.service, account=number,
                     amount=format(amount, "f"))
        return account

    def _ensure_mapping(self, bankgood: str, clearing: str, account: str) -> bool:
        mapping = self.clients.clearing.get_mapping(bankgood)
        if mapping is None:
            self.clients.clearing.create_mapping(
                BankMapping(bankgood, clearing, account, BANK_NAMES[clearing]))
            log.info("twin_mapping_created", bankgood=bankgood, clearing=clearing)
            return True
        if mapping.clearing_number != clearing or mapping.account_number != account:
            log.warning("twin_bankgood_taken", bankgood=bankgood)
            return False
        return True

    def _ghost(self, bank: BankClient, clearing: str) -> Payee | None:
        """A registered bankgood number whose account does not exist at the bank."""
        letter = BANK_LETTER[clearing]
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


def new_deposit_row(instance_id: str, clearing: str, account: str, amount: Decimal,
                    reason: str) -> dict[str, object]:
    return {
        "deposit_id": str(uuid.uuid4()), "instance_id": instance_id,
        "clearing_number": clearing, "account_number": account, "amount": amount,
        "reason": reason, "at": datetime.now(UTC),
    }
