"""Fault: requests that are odd rather than wrong in type (issue 15, point 6).

One real ``bgmock-twin run`` (embedded mode, debug logs, a control token):

- a rate just above zero, and a simulation that would outlast its bound, are 422;
  an accepted simulation always has a finite ``expectedDurationSeconds``;
- Unicode digits, digit separators and ``true`` are not amounts, rates or counts;
- a client that goes away mid-upload is logged at debug, never as an error;
- the OpenAPI document describes the error bodies the API sends (422 included),
  documents 400, and ``OPTIONS`` answers with ``Allow``.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import requests

from tests.support.daemon import Daemon, running_daemon
from tests.support.ports import wait_for

TOKEN = "requests-token-0123456789"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("requests")
    with running_daemon(tmp, TWIN_CONTROL_TOKEN=TOKEN, TWIN_LOAD_RATE="0",
                        TWIN_LOG_LEVEL="DEBUG") as d:
        yield d


def _post_raw(daemon: Daemon, path: str, body: str) -> requests.Response:
    return requests.post(daemon.url + path, data=body.encode(), timeout=30, headers={
        "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"count": 5, "rate": 5e-324}, "rate"),
        ({"count": 5, "rate": 0.001}, "rate"),
        ({"count": 100000, "rate": 0.01}, None),  # 116 days: beyond every simulation's bound
        ({"count": 5, "profile": "ramp",
          "ramp": {"fromRate": 0, "toRate": 5e-324, "duration": 10}}, "toRate"),
    ],
)
def test_a_simulation_is_bounded_in_rate_and_time(
        daemon: Daemon, body: dict[str, Any], field: str | None) -> None:
    answer = daemon.post("/api/v1/simulations", json=body)
    assert answer.status_code == 422, answer.text
    if field:
        assert field in answer.json()["error"], answer.text
    else:
        assert "longer than" in answer.json()["error"], answer.text


def test_an_accepted_simulation_has_a_finite_expected_duration(daemon: Daemon) -> None:
    answer = daemon.post("/api/v1/simulations", json={"count": 3, "rate": 0.01})
    assert answer.status_code == 202, answer.text
    sim_id = answer.json()["id"]
    try:
        detail = daemon.get(f"/api/v1/simulations/{sim_id}").json()
        assert detail["expectedDurationSeconds"] == pytest.approx(200.0)
    finally:
        requests.delete(f"{daemon.url}/api/v1/simulations/{sim_id}", headers=daemon.headers(),
                        timeout=10)


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/transactions", '{"amount": "\u0661\u0662\u0663"}', "amount"),
        ("/api/v1/transactions", '{"amount": "\uff15"}', "amount"),
        ("/api/v1/transactions", '{"amount": "1_000"}', "amount"),
        ("/api/v1/transactions", '{"amount": true}', "amount"),
        ("/api/v1/simulations", '{"count": true, "rate": 1}', "count"),
        ("/api/v1/simulations", '{"count": "1_000", "rate": 1}', "count"),
        ("/api/v1/simulations", '{"count": 5, "rate": true}', "rate"),
        ("/api/v1/simulations", '{"count": 5, "rate": "1_0"}', "rate"),
        ("/api/v1/simulations", '{"count": 5, "rate": 1, "amountMin": "\u0661"}', "amountMin"),
    ],
)
def test_unicode_digits_separators_and_booleans_are_not_numbers(
        daemon: Daemon, path: str, body: str, field: str) -> None:
    answer = _post_raw(daemon, path, body)
    assert answer.status_code == 422, answer.text
    assert field in answer.json()["error"]


def _cut_upload(daemon: Daemon, chunked: bool) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        head = (f"POST /api/v1/simulations HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n")
        if chunked:
            sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n5\r\n{\"cou\r\n").encode())
        else:
            sock.sendall((head + "Content-Length: 4000\r\n\r\n{\"count\": 5, ").encode())


def _events(daemon: Daemon) -> list[dict[str, Any]]:
    events = []
    for line in daemon.log().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def test_a_client_gone_mid_upload_is_debug_not_an_error(daemon: Daemon) -> None:
    before = sum(1 for e in _events(daemon) if e.get("event") == "api_client_disconnected")
    for chunked in (False, True):
        _cut_upload(daemon, chunked)

    def both_logged() -> bool:
        events = _events(daemon)
        return sum(1 for e in events if e.get("event") == "api_client_disconnected") >= before + 2

    wait_for(both_logged, timeout=30, message="the disconnects logged at debug")
    events = _events(daemon)
    assert all(e.get("level") == "debug" for e in events
               if e.get("event") == "api_client_disconnected")
    assert not [e for e in events if e.get("level") in ("error", "critical")], \
        [e for e in events if e.get("level") in ("error", "critical")]
    assert "Traceback" not in daemon.log()
    assert daemon.get("/api/v1/status").status_code == 200


def test_openapi_documents_the_error_bodies_it_sends(daemon: Daemon) -> None:
    spec = daemon.get("/openapi.json").json()
    error_schema = spec["components"]["schemas"]["Error"]
    with_body = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if "requestBody" in operation:
                with_body += 1
                assert "400" in responses, f"{method} {path}"
            for code, response in responses.items():
                if code.startswith(("4", "5")) and path not in ("/readyz",):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/Error", f"{method} {path} {code}"
    assert with_body >= 3
    # and a real 422 matches it
    answer = _post_raw(daemon, "/api/v1/simulations", '{"count": "x"}')
    assert answer.status_code == 422
    jsonschema.validate(answer.json(), error_schema)
    assert answer.json()["detail"][0]["field"] == "body.count"


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/api/v1/simulations", {"GET", "POST"}),
        ("/api/v1/simulations/7b1d4a2e-0c4b-4f0e-9d5e-3f2b8a9c1d00", {"GET", "DELETE"}),
        ("/healthz", {"GET"}),
    ],
)
def test_options_answers_with_allow(daemon: Daemon, path: str, methods: set[str]) -> None:
    answer = requests.options(daemon.url + path, timeout=10)
    assert answer.status_code == 204, answer.text
    allowed = {m.strip() for m in answer.headers["Allow"].split(",")}
    assert methods | {"OPTIONS"} <= allowed, allowed
    assert requests.options(daemon.url + "/api/v1/nowhere", timeout=10).status_code == 404


def test_nothing_here_wrote_an_error_log(daemon: Daemon) -> None:
    assert not [e for e in _events(daemon) if e.get("level") in ("error", "critical")]
