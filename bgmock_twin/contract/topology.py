"""The parts of BGMock and the ways into it: one ``Bank``, one ``Service``, one ``Channel``.

Every spelling of a bank the twin meets (the clearing number ``"01"`` on the wire,
the letter ``A`` in account names and the API, ``bank_a`` as a service and metric
label, ``db_bank_a`` as the database probe) is a field of one ``Bank`` value here,
so no module keeps a table of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Channel(StrEnum):
    """How a payment enters BGMock: at the source bank's REST door, or straight
    onto ``transactions.initiated`` (bypassing the source bank)."""

    REST = "rest"
    KAFKA = "kafka"


@dataclass(frozen=True, slots=True)
class Service:
    """One of BGMock's three services and the name of its own database."""

    name: str  # "bank_a", "bank_b", "clearing": REST client, probe and metric label
    database: str  # "db_bank_a", "db_bank_b", "db_switch": the seed's DB_* setting, lowercased

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Bank(Service):
    """A bank service: its clearing number on the wire and its letter for people."""

    clearing_number: str  # "01", "02": message keys and event fields
    letter: str  # "A", "B": account names and the control API

    @property
    def other(self) -> Bank:
        return BANK_B if self is BANK_A else BANK_A


BANK_A = Bank("bank_a", "db_bank_a", clearing_number="01", letter="A")
BANK_B = Bank("bank_b", "db_bank_b", clearing_number="02", letter="B")
BANKS: tuple[Bank, ...] = (BANK_A, BANK_B)
CLEARING = Service("clearing", "db_switch")
SERVICES: tuple[Service, ...] = (BANK_A, BANK_B, CLEARING)

_BY_CLEARING = {bank.clearing_number: bank for bank in BANKS}
_BY_LETTER = {bank.letter.lower(): bank for bank in BANKS}
_BY_NAME = {service.name: service for service in SERVICES}
_BY_DATABASE = {service.database: service for service in SERVICES}


def bank_by_clearing(clearing_number: str | None) -> Bank | None:
    """The bank with this clearing number, or None for any other value."""
    return _BY_CLEARING.get(clearing_number or "")


def bank_by_letter(letter: str | None) -> Bank | None:
    """The bank with this letter (``a`` or ``A``), or None."""
    return _BY_LETTER.get((letter or "").lower())


def service_by_name(name: str) -> Service | None:
    """``bank_a``, ``bank_b`` or ``clearing``, or None."""
    return _BY_NAME.get(name)


def service_by_database(database: str) -> Service | None:
    """The service whose database is ``db_bank_a``, ``db_bank_b`` or ``db_switch``."""
    return _BY_DATABASE.get(database)
