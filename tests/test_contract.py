"""The wire contract: every date form, Decimal amounts, unknown fields, bad events."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgmock_twin import contract
from bgmock_twin.contract import (
    InvalidEvent,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
    decode_event,
    encode_event,
)

TX = "3f1c1d2e-4b5a-4c6d-8e9f-0a1b2c3d4e5f"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ([2025, 11, 20, 10, 15, 30, 123456000], datetime(2025, 11, 20, 10, 15, 30, 123456)),
        ([2025, 11, 20, 10, 15], datetime(2025, 11, 20, 10, 15)),
        ([2025, 11, 20, 10, 15, 30], datetime(2025, 11, 20, 10, 15, 30)),
        ("2025-11-20T10:15:30.123456", datetime(2025, 11, 20, 10, 15, 30, 123456)),
        ("2025-11-20T10:15:30", datetime(2025, 11, 20, 10, 15, 30)),
    ],
)
def test_every_local_datetime_form(raw: object, expected: datetime | None) -> None:
    assert contract.parse_local_datetime(raw) == expected


def test_initiated_event_as_the_bank_writes_it() -> None:
    raw = (
        '{"transactionId":"%s","fromClearingNumber":"01","fromAccountNumber":"TWIN-A-001",'
        '"toBankgoodNumber":"555-0001","amount":500.00,"status":"PENDING","createdAt":null,'
        '"updatedAt":null,"somethingNew":{"nested":true}}' % TX
    ).encode()
    event = decode_event(contract.TOPIC_INITIATED, raw)
    assert isinstance(event, OutgoingTransactionEvent)
    assert event.amount == Decimal("500.00") and isinstance(event.amount, Decimal)
    assert event.transaction_id == uuid.UUID(TX)
    assert event.status is Status.PENDING


def test_amount_never_goes_through_float() -> None:
    raw = ('{"transactionId":"%s","amount":0.10000000000000000555,"toAccountNumber":"x"}'
           % TX).encode()
    event = decode_event(contract.TOPIC_FORWARDED, raw)
    assert event.amount == Decimal("0.10000000000000000555")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("topic", "raw", "reason"),
    [
        (contract.TOPIC_COMPLETED, b"not json", "not_json"),
        (contract.TOPIC_COMPLETED, b"[1,2]", "not_object"),
        (contract.TOPIC_COMPLETED, None, "empty"),
        (contract.TOPIC_COMPLETED, b'{"status":"SUCCESS"}', "missing_field"),
        (contract.TOPIC_COMPLETED, b'{"transactionId":"nope","status":"SUCCESS"}', "bad_field"),
        (contract.TOPIC_PROCESSED, ('{"transactionId":"%s","status":"MAYBE"}' % TX).encode(),
         "bad_field"),
        (contract.TOPIC_FORWARDED, ('{"transactionId":"%s"}' % TX).encode(), "missing_field"),
        (contract.TOPIC_FORWARDED, ('{"transactionId":"%s","amount":"x"}' % TX).encode(),
         "bad_field"),
        (contract.TOPIC_INITIATED, ('{"transactionId":"%s","amount":1,"createdAt":[1]}'
                                    % TX).encode(), "bad_field"),
        (contract.TOPIC_INITIATED, b'{"transactionId":"%s","amount":NaN}', "not_json"),
        (contract.TOPIC_COMPLETED, b"\xff\xfe\x00", "not_json"),
        ("other.topic", b"{}", "unknown_topic"),
    ],
)
def test_invalid_events_have_a_bounded_reason(topic: str, raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        decode_event(topic, raw)
    assert err.value.reason == reason


def test_encode_is_what_spring_writes() -> None:
    event = TransactionResponseEvent(uuid.UUID(TX), Status.SUCCESS, "ok")
    value, headers = encode_event(event)
    assert value == ('{"transactionId":"%s","status":"SUCCESS","message":"ok"}' % TX).encode()
    assert headers == {"__TypeId__": contract.TYPE_RESPONSE.encode()}


@given(
    cents=st.integers(min_value=1, max_value=10**12),
    dates=st.sampled_from(["null", "array", "iso"]),
    when=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_outgoing_round_trip(cents: int, dates: str, when: datetime) -> None:
    event = OutgoingTransactionEvent(
        uuid.uuid4(), "01", "TWIN-A-001", "555-0001", Decimal(cents) / 100, Status.PENDING,
        when, when,
    )
    value, _ = encode_event(event, dates=dates)
    decoded = decode_event(contract.TOPIC_INITIATED, value)
    assert decoded.amount == event.amount  # type: ignore[union-attr]
    if dates == "null":
        assert decoded.created_at is None  # type: ignore[union-attr]
    else:
        assert decoded.created_at == when  # type: ignore[union-attr]


def test_array_form_drops_trailing_zero_parts() -> None:
    assert contract.format_local_datetime_array(datetime(2025, 11, 20, 10, 15)) == \
        [2025, 11, 20, 10, 15]
