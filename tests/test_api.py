"""The control API of a real daemon: validation, auth, limits, OpenAPI, no 500s."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.support.daemon import Daemon, running_daemon

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("api")
    with running_daemon(tmp, TWIN_CONTROL_TOKEN=TOKEN, TWIN_LOAD_RATE="0") as d:
        yield d


def _post(daemon: Daemon, path: str, data: bytes | str, token: str | None = TOKEN,
          content_type: str = "application/json") -> requests.Response:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(daemon.url + path, data=data, headers=headers, timeout=30)


def test_health_endpoints(daemon: Daemon) -> None:
    assert daemon.get("/healthz").json() == {"status": "alive"}
    assert daemon.get("/readyz").json() == {"status": "ready"}


def test_openapi_documents_every_route(daemon: Daemon) -> None:
    spec = daemon.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/healthz", "/readyz", "/metrics", "/api/v1/status", "/api/v1/transactions"):
        assert path in paths, sorted(paths)


def test_one_payment_is_accepted_with_its_id(daemon: Daemon) -> None:
    answer = _post(daemon, "/api/v1/transactions", '{"amount": "125.50"}')
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert len(body["transactionId"]) == 36


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"amount": "abc"}', "amount"),
        ('{"amount": -5}', "amount"),
        ('{"amount": "1.234"}', "amount"),
        ('{"amount": "10", "surprise": 1}', "surprise"),
        ('{"from_bank": "z"}', "from_bank"),
        ('{"amount": [1]}', "amount"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(daemon: Daemon, body: str, field: str) -> None:
    answer = _post(daemon, "/api/v1/transactions", body)
    assert answer.status_code == 422, answer.text
    payload = answer.json()
    assert field in payload["error"], payload
    assert any(field in d["field"] for d in payload["detail"])


@pytest.mark.parametrize("body", ["{not json", "[]", "\xff\xfe", '{"amount": 1e999}', "[" * 5000])
def test_malformed_json_is_a_4xx_with_json(daemon: Daemon, body: str) -> None:
    answer = _post(daemon, "/api/v1/transactions", body.encode("latin-1"))
    assert 400 <= answer.status_code < 500, answer.text
    assert "error" in answer.json()


def test_empty_body_means_all_defaults(daemon: Daemon) -> None:
    answer = _post(daemon, "/api/v1/transactions", "")
    assert answer.status_code == 202, answer.text
    assert answer.json()["channel"] == "rest"


def test_mutations_need_the_token(daemon: Daemon) -> None:
    assert _post(daemon, "/api/v1/transactions", "{}", token=None).status_code == 401
    wrong = _post(daemon, "/api/v1/transactions", "{}", token="wrong")
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "missing or wrong bearer token"
    assert daemon.get("/api/v1/status").status_code == 200  # reads stay open


def _auth_failures(daemon: Daemon) -> dict[str, float | None]:
    return {reason: daemon.metric("bgmock_api_auth_failures_total", reason=reason)
            for reason in ("missing", "scheme", "wrong_token")}


def _post_with_header(daemon: Daemon, authorization: str) -> requests.Response:
    return requests.post(daemon.url + "/api/v1/transactions", data="{}", timeout=30,
                         headers={"Content-Type": "application/json",
                                  "Authorization": authorization})


def test_scheme_is_case_insensitive_but_the_token_is_exact(daemon: Daemon) -> None:
    assert _post_with_header(daemon, f"bearer {TOKEN}").status_code == 202
    assert _post_with_header(daemon, f"BEARER {TOKEN}").status_code == 202
    before = _auth_failures(daemon)
    assert None not in before.values(), "every reason is exported from the start"
    for padded in (f"Bearer  {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"):
        assert _post_with_header(daemon, padded).status_code == 401, padded
    assert _post_with_header(daemon, f"Basic {TOKEN}").status_code == 401
    assert _post(daemon, "/api/v1/transactions", "{}", token=None).status_code == 401
    after = _auth_failures(daemon)
    assert {reason: (after[reason] or 0) - (before[reason] or 0) for reason in after} == \
        {"wrong_token": 3, "scheme": 1, "missing": 1}
    refusals = [line for line in daemon.log_path.read_text().splitlines()
                if "api_auth_refused" in line]
    assert refusals, "a refusal is logged"
    assert len(refusals) <= 2, "refusals are logged rate-limited, not one line each"
    assert TOKEN not in daemon.log_path.read_text()


def test_oversized_body_is_refused_early(daemon: Daemon) -> None:
    answer = _post(daemon, "/api/v1/transactions", "{" + " " * 200_000 + "}")
    assert answer.status_code == 413
    assert "error" in answer.json()


def test_unknown_route_is_json_404(daemon: Daemon) -> None:
    answer = daemon.get("/api/v1/nothing-here")
    assert answer.status_code == 404
    assert answer.json()["error"]


def test_fault_endpoint_validates(daemon: Daemon) -> None:
    assert _post(daemon, "/api/v1/emulator/faults", '{"target": "mars"}').status_code == 422
    assert _post(daemon, "/api/v1/emulator/faults",
                 '{"target": "bank_a", "error_rate": 7}').status_code == 422
    assert _post(daemon, "/api/v1/emulator/faults", '{"service": "mars"}').status_code == 422
    assert _post(daemon, "/api/v1/emulator/faults",
                 '{"service": "bank_a", "errorRate": 7}').status_code == 422
    both = _post(daemon, "/api/v1/emulator/faults", '{"service": "bank_a", "target": "bank_a"}')
    assert both.status_code == 422 and "target" in both.json()["error"], both.text


def test_fault_names_are_camel_case_and_the_old_names_still_work(daemon: Daemon) -> None:
    for body in ('{"service": "bank_a", "latencySeconds": 0, "errorRate": 0, '
                 '"stallOutbox": false}',
                 '{"target": "bank_a", "latency_seconds": 0, "error_rate": 0, '
                 '"stall_outbox": false}'):
        answer = _post(daemon, "/api/v1/emulator/faults", body)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"service": "bank_a", "applied": {
            "down": False, "hang": False, "latencySeconds": 0.0, "errorRate": 0.0,
            "garbage": False, "paused": False, "stallOutbox": False}}


def test_status_is_camel_case(daemon: Daemon) -> None:
    status = daemon.get("/api/v1/status").json()
    assert {"mode", "instance", "version", "startedAt", "services", "payments"} <= set(status)
    assert set(status["services"]["bank_a"]) == {
        "service", "up", "lastCheck", "lastUp", "latencySeconds", "reason",
        "consecutiveFailures"}
    payments = status["payments"]
    assert {"inFlight", "parkedEvents", "senderBusy", "simulationsActive", "provisionError",
            "kafkaConnected", "backgroundRate", "consumerGroup"} <= set(payments)
    assert set(payments["ledger"]) == {"available", "buffered"}
    assert not [key for key in [*status, *payments] if "_" in key]


def test_status_never_shows_the_token(daemon: Daemon) -> None:
    text = daemon.get("/api/v1/status").text
    assert TOKEN not in text
    assert TOKEN not in daemon.log()


# Maps keyed by an identifier (a service, a check, a source, a status) keep the
# identifier as its key, the same string as in the metric labels and query values;
# every field name is camelCase.
IDENTIFIER_KEYED = {"services", "checks", "sources", "currentStatus", "outcomes", "drift",
                    "driftingAccounts", "clockOffsetsSeconds", "byStatus", "counts"}


def _snake_fields(value: object, parent: str = "", path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if "_" in key and parent not in IDENTIFIER_KEYED:
                found.append(f"{path}.{key}")
            found += _snake_fields(item, key, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            found += _snake_fields(item, parent, f"{path}[]")
    return found


def test_every_answer_names_its_fields_in_camel_case(daemon: Daemon) -> None:
    sim = _post(daemon, "/api/v1/simulations", '{"count": 2, "rate": 5}')
    assert sim.status_code == 202, sim.text
    payment = _post(daemon, "/api/v1/transactions", "{}")
    assert payment.status_code in (202, 502), payment.text
    bodies = {"POST /api/v1/simulations": sim.json(),
              "POST /api/v1/transactions": payment.json(),
              "422": _post(daemon, "/api/v1/transactions", '{"amount": -1}').json(),
              "404": daemon.get("/api/v1/nothing-here").json()}
    ids = {"simulation_id": sim.json()["id"],
           "transaction_id": payment.json().get("paymentId", sim.json()["id"])}
    spec = daemon.get("/openapi.json").json()
    gets = [path for path, operations in spec["paths"].items() if "get" in operations
            and path not in ("/metrics", "/healthz", "/readyz")]
    assert "/api/v1/transactions/{transaction_id}" in gets
    for path in gets:
        answer = daemon.get(path.format(**ids))
        assert answer.status_code < 500, (path, answer.text)
        bodies[f"GET {path}"] = answer.json()
    run = _post(daemon, "/api/v1/reconciliation/run", "{}")
    bodies["POST /api/v1/reconciliation/run"] = run.json()
    offending = {where: fields for where, body in bodies.items()
                 if (fields := _snake_fields(body))}
    assert not offending


def test_each_domain_refusal_has_its_status_code_and_message() -> None:
    from bgmock_twin.api.errors import refusal
    from bgmock_twin.errors import NotInThisMode, RequestRefused
    from bgmock_twin.tracking.ledger import LedgerUnavailable
    from bgmock_twin.tracking.load import FixturesUnavailable
    from bgmock_twin.tracking.service import InvalidPayment, SenderBusy
    from bgmock_twin.tracking.simulations import (
        InvalidSimulation,
        TooManySimulations,
        UnknownSimulation,
    )

    assert refusal(FixturesUnavailable("no accounts")) == (503, "no accounts")
    assert refusal(SenderBusy("busy")) == (503, "busy")
    assert refusal(LedgerUnavailable("db down")) == (503, "ledger unavailable: db down")
    assert refusal(InvalidPayment("same bank")) == (422, "same bank")
    assert refusal(InvalidSimulation("bad ramp")) == (422, "bad ramp")
    assert refusal(TooManySimulations("20")) == (409, "20")
    assert refusal(NotInThisMode("embedded only")) == (409, "embedded only")
    assert refusal(UnknownSimulation("no such simulation")) == (404, "no such simulation")
    assert refusal(RequestRefused("no")) == (400, "no")


def test_rate_limiter_buckets_are_per_client() -> None:
    from bgmock_twin.api.server import RateLimiter

    limiter = RateLimiter(rate=0.001, burst=3, max_clients=2)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b")
    assert limiter.allow("c")  # evicts the oldest client, memory stays bounded
    assert len(limiter._buckets) == 2


def test_flood_of_mutations_gets_429_and_reads_still_work(daemon: Daemon) -> None:
    codes = [_post(daemon, "/api/v1/emulator/faults", '{"target": "nope"}').status_code
             for _ in range(150)]
    assert 429 in codes
    assert set(codes) <= {422, 429}
    assert daemon.get("/api/v1/status").status_code == 200
