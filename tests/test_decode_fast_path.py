"""The event hot path's shortcuts keep the exact behaviour they replace: ``loads_json``
with one shared decoder is ``json.loads`` with Decimal numbers (also from many
threads at once), status values are checked as strictly as ``Status(value)``, and
the recent-events view, kept as objects until it is read, shows the same text."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgmock_twin.bus.base import Record
from bgmock_twin.contract import (
    TOPIC_COMPLETED,
    TOPIC_INITIATED,
    InvalidEvent,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
    decode_event,
    encode_event,
    loads_json,
)
from bgmock_twin.tracking.ledger import Ledger
from bgmock_twin.tracking.lifecycle import Channel, Kind, Payment, Route
from bgmock_twin.tracking.tracker import Tracker


def reference(raw: bytes | bytearray | str) -> Any:
    def reject(name: str) -> Any:
        raise ValueError(name)

    return json.loads(raw, parse_float=Decimal, parse_constant=reject)


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return "value", call()
    except Exception as exc:
        return "error", type(exc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(["str", "utf-8", "utf-16", "utf-32", "utf-16-le"]))
def test_loads_json_is_json_loads_with_decimals(value: Any, form: str) -> None:
    text = json.dumps(value)
    raw: bytes | str = text if form == "str" else text.encode(form)
    assert outcome(lambda: loads_json(raw)) == outcome(lambda: reference(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40) | st.text(max_size=40))
def test_loads_json_fails_exactly_where_json_loads_fails(raw: bytes | str) -> None:
    assert outcome(lambda: loads_json(raw)) == outcome(lambda: reference(raw))


@pytest.mark.parametrize("raw", [
    "\ufeff{}", b"\xef\xbb\xbf{}", "NaN", b"[Infinity]", '{"a": -Infinity}', b"", "",
    bytearray(b'{"amount": 1.10}'), b'{"amount": 1.10}',
])
def test_loads_json_edge_cases(raw: bytes | bytearray | str) -> None:
    assert outcome(lambda: loads_json(raw)) == outcome(lambda: reference(raw))


def test_loads_json_refuses_what_is_not_text() -> None:
    with pytest.raises(TypeError):
        loads_json(12)  # type: ignore[arg-type]


def test_the_shared_decoder_is_safe_from_many_threads() -> None:
    bodies = [encode_event(TransactionResponseEvent(uuid.uuid4(), status, f"m{i}"))[0]
              for i, status in enumerate([Status.SUCCESS, Status.FAILED] * 200)]
    expected = [json.loads(b, parse_float=Decimal) for b in bodies]
    wrong: list[int] = []

    def decode_all() -> None:
        for _ in range(20):
            for i, body in enumerate(bodies):
                if loads_json(body) != expected[i]:
                    wrong.append(i)

    threads = [threading.Thread(target=decode_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


@pytest.mark.parametrize("status", ["pending", "SUCCESS ", "", 1, True, ["SUCCESS"],
                                    {"v": "SUCCESS"}, 1.5])
def test_status_values_outside_the_enum_are_bad_fields(status: Any) -> None:
    body = json.dumps({"transactionId": str(uuid.uuid4()), "status": status}).encode()
    with pytest.raises(InvalidEvent) as caught:
        decode_event(TOPIC_COMPLETED, body)
    assert caught.value.reason == "bad_field"


@pytest.mark.parametrize("status", list(Status))
def test_every_status_decodes_to_its_member(status: Status) -> None:
    body = json.dumps({"transactionId": str(uuid.uuid4()), "status": status.value}).encode()
    event = decode_event(TOPIC_COMPLETED, body)
    assert isinstance(event, TransactionResponseEvent) and event.status is status


def test_the_events_view_shows_text_whatever_is_kept(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert ledger.open()
    tracker = Tracker(ledger, step_deadline=10, sla=30)
    tx = uuid.uuid4()
    tracker.register(Payment(
        payment_id=str(uuid.uuid4()), channel=Channel.KAFKA, route=Route.A_TO_B,
        kind=Kind.NORMAL, from_clearing="01", from_account="TWIN-A-001",
        to_bankgood="TWIN-BG-B-001", to_clearing="02", to_account="TWIN-B-001",
        amount=Decimal("12.50"), intended_at=datetime.now(UTC), intended_mono=time.monotonic(),
        transaction_id=tx))
    value, headers = encode_event(OutgoingTransactionEvent(
        tx, "01", "TWIN-A-001", "TWIN-BG-B-001", Decimal("12.50"), Status.PENDING))
    record = Record(TOPIC_INITIATED, 1, 7, b"01", value, tuple(headers.items()))
    tracker.on_event(record, decode_event(TOPIC_INITIATED, value))
    tracker.record_invalid(Record(TOPIC_COMPLETED, 0, 3, None, b"x"), "not_json")
    invalid, seen = tracker.events(10)
    assert seen == {
        "topic": TOPIC_INITIATED, "partition": 1, "offset": 7, "key": "01",
        "transactionId": str(tx), "status": "PENDING", "origin": "twin",
        "observedAt": seen["observedAt"], "amount": "12.50",
    }
    assert datetime.fromisoformat(seen["observedAt"]).tzinfo is not None
    assert invalid["key"] is None and invalid["transactionId"] is None
    assert isinstance(invalid["observedAt"], str) and invalid["reason"] == "not_json"
    # reading twice gives the same text (the kept entries are not changed by reading)
    assert tracker.events(10) == [invalid, seen]
    assert tracker.events(1, origin="twin") == [seen]
    ledger.close()
