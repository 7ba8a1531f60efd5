"""One pooled, instrumented HTTP client per BGMock service.

Every call has a timeout, goes through a shared connection pool, and is counted in
``bgmock_rest_requests_total`` / ``bgmock_rest_request_duration_seconds`` by *route
template* (``/bank/account/{accountNumber}``), never by the raw path, so ids never
become label values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from bgmock_twin import metrics
from bgmock_twin.contract import dumps_json, loads_json


class ServiceError(Exception):
    """A BGMock service could not be reached or answered unexpectedly.

    ``reason`` is a short bounded label: timeout, connection, http_<code>, bad_body.
    ``maybe_processed`` is True when the request reached the service but no answer
    came back (read timeout, connection lost mid-request): the service may have
    acted on it, so a payment sent that way is not known to be refused.
    """

    def __init__(self, service: str, reason: str, detail: str = "",
                 maybe_processed: bool = False) -> None:
        super().__init__(f"{service}: {reason}{': ' + detail if detail else ''}")
        self.service = service
        self.reason = reason
        self.maybe_processed = maybe_processed


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any  # decoded JSON (Decimal numbers), str for text, None for empty
    text: str


class RestClient:
    """HTTP to one service. Thread-safe: requests' Session pool is shared by threads."""

    def __init__(
        self,
        service: str,
        base_url: str,
        timeout: float,
        pool_size: int = 32,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        # No proxy variables or ~/.netrc lookups on every call: they cost about a
        # third of the client's CPU, and the twin talks to fixed service URLs.
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def request(
        self,
        method: str,
        route: str,
        path_params: dict[str, str] | None = None,
        *,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> Response:
        """Call ``route`` (a template like ``/bank/account/{accountNumber}``).

        Raises ``ServiceError`` for timeouts and connection failures; HTTP error
        codes are returned, the caller decides what they mean.
        """
        path = route.format(**{k: quote(v, safe="") for k, v in
                               (path_params or {}).items()})
        data = None if json_body is None else dumps_json(json_body)
        headers = {"Accept": "application/json, text/plain"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        code = "error"
        try:
            raw = self.session.request(
                method, self.base_url + path, params=params, data=data, headers=headers,
                timeout=timeout or self.timeout, allow_redirects=False,
            )
            code = str(raw.status_code)
        except requests.Timeout as exc:
            code = "timeout"
            raise ServiceError(self.service, "timeout", str(exc),
                               maybe_processed=not isinstance(exc, requests.ConnectTimeout)) \
                from None
        except requests.RequestException as exc:
            code = "connection"
            raise ServiceError(self.service, "connection", type(exc).__name__,
                               maybe_processed=_maybe_processed(exc)) from None
        finally:
            metrics.REST_REQUESTS.labels(self.service, method, route, code).inc()
            metrics.REST_DURATION.labels(self.service, method, route).observe(
                time.monotonic() - started
            )
        return Response(raw.status_code, _decode(raw), raw.text)

    def close(self) -> None:
        self.session.close()


def _maybe_processed(exc: requests.RequestException) -> bool:
    """False only when the request surely never reached the service (no connection)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return not isinstance(reason, NewConnectionError | ConnectTimeoutError | NameResolutionError)


def _decode(raw: requests.Response) -> Any:
    if not raw.content:
        return None
    if "json" in raw.headers.get("Content-Type", ""):
        try:
            return loads_json(raw.content)
        except ValueError:
            return raw.text
    return raw.text


def expect(response: Response, service: str, *codes: int) -> Any:
    """The body of a response with one of ``codes``, else ``ServiceError``."""
    if response.status not in codes:
        raise ServiceError(service, f"http_{response.status}", response.text[:200])
    return response.body


def expect_object(response: Response, service: str, *codes: int) -> dict[str, Any]:
    body = expect(response, service, *codes)
    if not isinstance(body, dict):
        raise ServiceError(service, "bad_body", "expected a JSON object")
    return body
