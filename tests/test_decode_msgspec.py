"""``decode_event`` (msgspec for the common forms) gives exactly what the exact reader
(``decode_event_exact``) gives: the same event, or an ``InvalidEvent`` with the same
reason, for events in every wire form and for arbitrary, broken or hostile bodies."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgmock_twin.contract import (
    TOPICS,
    IncomingTransactionEvent,
    InvalidEvent,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
    decode_event,
    decode_event_exact,
    encode_event,
)
from bgmock_twin.contract.wire_fast import fast_decode


def outcome(topic: str, raw: bytes | None, decode: Any) -> tuple[str, Any]:
    try:
        return "event", decode(topic, raw)
    except InvalidEvent as exc:
        return "invalid", exc.reason


def same(topic: str, raw: bytes | None) -> None:
    assert outcome(topic, raw, decode_event) == outcome(topic, raw, decode_event_exact)


amounts = st.decimals(allow_nan=False, allow_infinity=False, places=2,
                      min_value=Decimal("-1e12"), max_value=Decimal("1e12"))
times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1))
texts = st.none() | st.text(max_size=12)
events = st.one_of(
    st.builds(OutgoingTransactionEvent, st.uuids(), texts, texts, texts, amounts,
              st.none() | st.sampled_from(Status), st.none() | times, st.none() | times),
    st.builds(IncomingTransactionEvent, st.uuids(), texts, texts, amounts,
              st.none() | st.sampled_from(Status), st.none() | times, st.none() | times),
    st.builds(TransactionResponseEvent, st.uuids(), st.sampled_from(Status), texts),
)


@settings(max_examples=400, deadline=None)
@given(events, st.sampled_from(["null", "array", "iso"]))
def test_every_event_in_every_date_form_decodes_fast_and_the_same(event: Any, dates: str) -> None:
    raw, _headers = encode_event(event, dates=dates)
    topic = {OutgoingTransactionEvent: TOPICS[0], IncomingTransactionEvent: TOPICS[1],
             TransactionResponseEvent: TOPICS[3]}[type(event)]
    expected = event
    if dates == "null" and not isinstance(event, TransactionResponseEvent):
        expected = dataclasses.replace(event, created_at=None, updated_at=None)
    assert fast_decode(topic, raw) == decode_event_exact(topic, raw) == expected


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["SUCCESS", "PENDING", "FAILED", "NaN", "1e3", " 12", "1_0",
                       str(uuid.UUID(int=7)), "{%s}" % uuid.UUID(int=7), uuid.UUID(int=7).hex,
                       "2025-01-02T03:04:05", "2025-13-01"]),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=12,
)
keys = st.sampled_from(["transactionId", "fromClearingNumber", "fromAccountNumber",
                        "toBankgoodNumber", "toClearingNumber", "toAccountNumber", "amount",
                        "status", "message", "createdAt", "updatedAt", "other"])


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(keys, values, max_size=8), st.sampled_from(TOPICS),
       st.sampled_from(["utf-8", "utf-16"]))
def test_arbitrary_objects_decode_the_same(body: dict[str, Any], topic: str, form: str) -> None:
    same(topic, json.dumps(body).encode(form))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.sampled_from(TOPICS))
def test_arbitrary_bytes_decode_the_same(raw: bytes, topic: str) -> None:
    same(topic, raw)


TX = "6f1c1f8e-7a1b-4c2d-9e3f-0a1b2c3d4e5f"


@pytest.mark.parametrize("raw", [
    None, b"", b"[]", b"null", b'{"transactionId": null, "status": "SUCCESS"}',
    ('{"transactionId": "%s", "status": "SUCCESS", "status": "NOPE"}' % TX).encode(),
    ('{"transactionId": "%s", "amount": "NaN"}' % TX).encode(),
    ('{"transactionId": "%s", "amount": "Infinity"}' % TX).encode(),
    ('{"transactionId": "%s", "amount": 1e400}' % TX).encode(),
    ('{"transactionId": "%s", "amount": true}' % TX).encode(),
    ('{"transactionId": "%s", "amount": 12.30, "createdAt": [2025, 2, 30]}' % TX).encode(),
    ('{"transactionId": "%s", "amount": 12.30, "createdAt": [2025, 2, 3, true]}' % TX).encode(),
    ('{"transactionId": "%s", "amount": 12.30, "toClearingNumber": 1.5}' % TX).encode(),
    ('{"transactionId": "%s", "amount": 12.30, "toClearingNumber": 123456789012345678901234}'
     % TX).encode(),
    ('{"transactionId": "%s", "status": "SUCCESS", "message": {"a": [1.5, NaN]}}'
     % TX).encode(),
    ('\ufeff{"transactionId": "%s", "status": "SUCCESS"}' % TX).encode(),
    ('{"transactionId": "%s", "status": "SUCCESS", "message": "\\ud800"}' % TX).encode(),
])
@pytest.mark.parametrize("topic", TOPICS)
def test_edge_bodies_decode_the_same(raw: bytes | None, topic: str) -> None:
    same(topic, raw)


def test_amounts_are_exact_from_numbers_and_strings() -> None:
    for literal in ("0.10", "12345678901234567890.99", "\"7.05\"", "1E+2"):
        raw = ('{"transactionId": "%s", "amount": %s, "status": "PENDING"}'
               % (TX, literal)).encode()
        event = fast_decode(TOPICS[1], raw)
        assert isinstance(event, IncomingTransactionEvent)
        assert event.amount == Decimal(literal.strip('"'))
        assert str(event.amount) == str(Decimal(literal.strip('"')))
