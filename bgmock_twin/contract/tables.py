"""The real BGMock table layout (created by Hibernate in the real services).

The emulator creates these tables so that its books look exactly like the real
ones; the reconciliation reads them, read-only, in the real databases. Column
names and types follow ``shared/bgmock-contract.md``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.schema import SchemaItem

AMOUNT = sa.Numeric(19, 2)


def _outgoing(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "outgoing_transactions", metadata,
        sa.Column("transaction_id", sa.Uuid, primary_key=True),
        sa.Column("from_clearing_number", sa.String(255)),
        sa.Column("from_account_number", sa.String(255)),
        sa.Column("to_bankgood_number", sa.String(255)),
        sa.Column("amount", AMOUNT),
        sa.Column("status", sa.String(255)),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
    )


def _outbox(metadata: sa.MetaData, unique_per_topic: bool) -> sa.Table:
    # The bank's entity declares unique (transaction_id, topic) and an index on
    # published; the clearing's declares neither, which is what lets a redelivered
    # ``transactions.processed`` yield a second ``transactions.completed`` row.
    # The index is kept on both: it changes no behaviour and keeps draining cheap.
    extra: list[SchemaItem] = [sa.Index(f"idx_{metadata.info['service']}_outbox_published",
                                           "published")]
    if unique_per_topic:
        extra.append(sa.UniqueConstraint("transaction_id", "topic"))
    return sa.Table(
        "outbox_events", metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("transaction_id", sa.Uuid, nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("message_key", sa.String(255)),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False, default=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        *extra,
    )


bank_metadata = sa.MetaData(info={"service": "bank"})
accounts = sa.Table(
    "accounts", bank_metadata,
    sa.Column("account_id", sa.Uuid, primary_key=True),
    sa.Column("account_number", sa.String(255), nullable=False, unique=True),
    sa.Column("account_holder", sa.String(255)),
    sa.Column("balance", AMOUNT, nullable=False),
    sa.Column("reserved_balance", AMOUNT, nullable=False),
    sa.Column("version", sa.BigInteger),
    sa.Column("created_at", sa.DateTime),
    sa.Column("updated_at", sa.DateTime),
)
bank_outgoing_transactions = _outgoing(bank_metadata)
incoming_transactions = sa.Table(
    "incoming_transactions", bank_metadata,
    sa.Column("transaction_id", sa.Uuid, primary_key=True),
    sa.Column("to_clearing_number", sa.String(255)),
    sa.Column("to_account_number", sa.String(255)),
    sa.Column("amount", AMOUNT),
    sa.Column("status", sa.String(255)),
    sa.Column("created_at", sa.DateTime),
    sa.Column("updated_at", sa.DateTime),
)
bank_outbox_events = _outbox(bank_metadata, unique_per_topic=True)

clearing_metadata = sa.MetaData(info={"service": "clearing"})
bank_mappings = sa.Table(
    "bank_mappings", clearing_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("bankgood_number", sa.String(255), nullable=False, unique=True),
    sa.Column("clearing_number", sa.String(255)),
    sa.Column("account_number", sa.String(255)),
    sa.Column("bank_name", sa.String(255)),
)
clearing_outgoing_transactions = _outgoing(clearing_metadata)
clearing_outbox_events = _outbox(clearing_metadata, unique_per_topic=False)
