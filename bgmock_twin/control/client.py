"""An HTTP client of the twin's control API: JSON in, JSON out, errors made plain.

Every failure the user can act on becomes a ``ControlError`` with one readable
sentence: the twin unreachable, the token refused, a request the twin rejected
(with the fields it named). The token is sent, never printed.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from typing import IO, Any, cast

import requests
from urllib3.exceptions import ProtocolError

# The daemon's default listen address (TWIN_LISTEN_HOST/TWIN_LISTEN_PORT).
DEFAULT_URL = "http://127.0.0.1:8080"
API = "/api/v1"


class ControlError(Exception):
    """The request could not be made or the twin refused it."""


class ControlClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    # --- calls --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self._json("GET", f"{API}/status")

    def simulations(self) -> list[dict[str, Any]]:
        return list(self._json("GET", f"{API}/simulations").get("items", []))

    def accounts(self, bank: str | None = None) -> dict[str, Any]:
        return self._json("GET", f"{API}/accounts", params={"bank": bank} if bank else None)

    def simulation(self, simulation_id: str) -> dict[str, Any]:
        return self._json("GET", f"{API}/simulations/{simulation_id}")

    def start_simulation(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"{API}/simulations", json=body)

    def stop_simulation(self, simulation_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"{API}/simulations/{simulation_id}")

    def payments_csv(self, simulation_id: str) -> Iterator[list[str]]:
        """Every payment of a simulation as CSV rows, the header first: one streamed
        export (``format=csv`` has no page cap), read row by row off the socket. An
        export the twin broke off raises ``ControlError``, so a cut file is never
        taken for a whole one."""
        response = self._request(
            "GET", f"{API}/transactions", stream=True,
            params={"simulation": simulation_id, "format": "csv"},
        )
        with response:
            response.raw.decode_content = True
            response.raw.auto_close = False  # let the text wrapper see EOF, not a close
            raw = cast(IO[bytes], response.raw)
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            try:
                yield from reader
            except (requests.RequestException, OSError, ProtocolError) as exc:
                raise ControlError(f"the CSV export broke off: {exc}") from None

    # --- plumbing -----------------------------------------------------------------------------
    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise ControlError(f"{method} {path}: the twin answered {response.status_code} "
                               "with something that is not JSON") from None
        if not isinstance(body, dict):
            raise ControlError(f"{method} {path}: unexpected answer {str(body)[:200]}")
        return body

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        for attempt in range(5):
            try:
                response = self.session.request(method, self.url + path,
                                                timeout=self.timeout, **kwargs)
            except requests.ConnectionError:
                raise ControlError(f"cannot reach the twin at {self.url} "
                                   "(is `bgmock-twin run` running there? see --url)") from None
            except requests.Timeout:
                raise ControlError(f"the twin at {self.url} did not answer "
                                   f"{method} {path} within {self.timeout:g} s") from None
            except requests.RequestException as exc:
                raise ControlError(f"{method} {self.url}{path} failed: {exc}") from None
            if response.status_code == 429 and attempt < 4:  # the API's rate limiter
                response.close()
                time.sleep(_retry_after(response))
                continue
            if response.status_code >= 400:
                raise ControlError(_refusal(method, path, response))
            return response
        raise AssertionError("unreachable")


def _retry_after(response: requests.Response) -> float:
    try:
        return min(5.0, max(0.1, float(response.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def _refusal(method: str, path: str, response: requests.Response) -> str:
    code = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = {}
    message = body.get("error") if isinstance(body, dict) else None
    details = body.get("detail") if isinstance(body, dict) else None
    if code == 401:
        return ("the twin refused the control token (401): pass the twin's "
                "TWIN_CONTROL_TOKEN with --token or the TWIN_CONTROL_TOKEN environment "
                "variable")
    text = f"the twin refused {method} {path} ({code}): {message or response.reason}"
    if isinstance(details, list):
        fields = [f"{d.get('field')}: {d.get('message')}" for d in details
                  if isinstance(d, dict)]
        if fields:
            text += " — " + "; ".join(fields)
    return text
