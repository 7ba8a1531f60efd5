"""Fuzz the control API of a real daemon from its own OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid: no answer may be a
500, a 502/503 may only say that a BGMock service failed, and every error carries
a JSON body with an ``error`` message. Each simulation a valid request starts is
stopped at once so that generated load stays bounded. The emulator
fault endpoint is fuzzed with invalid bodies only (valid ones would take the
embedded BGMock down on purpose).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.support.daemon import Daemon, running_daemon

TOKEN = "fuzz-token-0123456789"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with running_daemon(tmp, TWIN_CONTROL_TOKEN=TOKEN, TWIN_LOAD_RATE="0",
                        TWIN_API_RATE_LIMIT="100000", TWIN_API_READ_RATE_LIMIT="100000",
                        TWIN_MAX_IN_FLIGHT_REQUESTS="8") as d:
        yield d


def _operations(daemon: Daemon, mode: GenerationMode) -> list[object]:
    config = schemathesis.config.SchemathesisConfig()
    config.projects.default.generation.update(modes=[mode])
    schema = schemathesis.openapi.from_url(daemon.url + "/openapi.json", config=config)
    return [result.ok() for result in schema.get_all_operations()]


def _check(response: requests.Response, label: str) -> None:
    text = f"{label} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code != 500, text
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and body.get("error"), text
    if response.status_code >= 500:
        assert response.status_code in (502, 503), text
        assert "bank_a" in body["error"] or "bank_b" in body["error"] or \
            "clearing" in body["error"], text


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_5xx(daemon: Daemon, mode: GenerationMode) -> None:
    session = requests.Session()
    seen: list[str] = []
    for operation in _operations(daemon, mode):
        label = f"{operation.method.upper()} {operation.path}"  # type: ignore[attr-defined]
        if "/emulator/" in label and mode is GenerationMode.POSITIVE:
            continue
        seen.append(label)

        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())  # type: ignore[attr-defined]
        def run(case: schemathesis.Case) -> None:
            response = case.call(base_url=daemon.url, session=session,
                                 headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
            _check(response, f"{label} {case.body!r:.200}")  # noqa: B023 (called at once)
            if response.status_code == 202 and "simulations" in label:  # noqa: B023
                sim_id = response.json()["id"]
                requests.delete(f"{daemon.url}/api/v1/simulations/{sim_id}", timeout=10,
                                headers={"Authorization": f"Bearer {TOKEN}"})

        run()
    assert any("simulations" in s for s in seen) and any("transactions" in s for s in seen)
    # whatever was thrown at it, the daemon is still up and answering
    assert daemon.process.poll() is None
    assert daemon.get("/readyz").status_code == 200
    for sim in daemon.get("/api/v1/simulations").json().get("items", []):
        requests.delete(f"{daemon.url}/api/v1/simulations/{sim['id']}",
                        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
