"""The control API's listener on its own: uvicorn with a main loop that ticks once a
second (an idle daemon does not wake ten times a second for it), still serving the
Date header and still stopping at once."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

import pytest
import requests
from fastapi import FastAPI

from bgmock_twin.api import listener
from bgmock_twin.api.listener import ApiServer


def test_the_quiet_server_serves_a_current_date_and_stops_without_waiting_a_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener, "TICK_SECONDS", 120.0)
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    server = ApiServer(app, "127.0.0.1", 0)
    server.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{server.port}/ping", timeout=5)
        assert answer.json() == {"ok": True}
        served_at = parsedate_to_datetime(answer.headers["date"]).timestamp()
        assert abs(served_at - time.time()) < 5
    finally:
        server.stop(timeout=20)
    assert not server._thread.is_alive(), "the stop waited for the next tick"
