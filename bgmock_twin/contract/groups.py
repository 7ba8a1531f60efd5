"""BGMock's Kafka consumer groups, as the real services name them.

The clearing has one group per listener (``clearing-service-initiated`` and
``clearing-service-processed``: the contract's corrections section; there is no
``clearing-service`` group), each bank one per topic it reads, suffixed with its
clearing number. The emulator joins exactly these groups and the twin watches
them by default, so a lag or stall alert means the same thing against either.
"""

from __future__ import annotations

from bgmock_twin.contract.topology import BANKS
from bgmock_twin.contract.wire import TOPIC_INITIATED, TOPIC_PROCESSED

CLEARING_GROUPS: dict[str, str] = {
    TOPIC_INITIATED: "clearing-service-initiated",
    TOPIC_PROCESSED: "clearing-service-processed",
}


def bank_groups(clearing_number: str) -> tuple[str, str]:
    """The consumer groups of a bank: forwarded and completed."""
    return (f"bank-service-forwarded.{clearing_number}",
            f"bank-service-completed.{clearing_number}")


BANK_GROUPS: tuple[str, ...] = tuple(
    group for bank in BANKS for group in bank_groups(bank.clearing_number))
CONSUMER_GROUPS: tuple[str, ...] = (*BANK_GROUPS, *CLEARING_GROUPS.values())
