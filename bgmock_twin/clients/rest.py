"""One pooled, instrumented HTTP client per BGMock service, and the rules every
HTTP client of the twin shares.

Every call has a timeout, goes through a shared connection pool, and is counted in
``bgmock_rest_requests_total`` / ``bgmock_rest_request_duration_seconds`` by *route
template* (``/bank/account/{accountNumber}``), never by the raw path, so ids never
become label values.

Two clients speak HTTP: this ``requests`` one (probes, provisioning, status look-ups,
the books) and the sender's ``aiohttp`` one (``rest_async``, the hot path). What a
failure means is decided here once for both: each client only names which
``Failure`` happened, and ``failure_error`` turns it into the ``ServiceError`` (and
metric code) the twin acts on; requests are built (``prepare``), counted (``record``)
and bodies decoded (``decode_body``) the same way too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
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


class Failure(Enum):
    """How a request failed without an HTTP answer, as any client can tell it."""

    NOT_CONNECTED = "not_connected"  # refused, no route, no name: surely never arrived
    CONNECT_TIMEOUT = "connect_timeout"  # no connection in time: never arrived either
    READ_TIMEOUT = "read_timeout"  # sent, no answer in time: the service may have acted
    LOST = "lost"  # the connection broke mid-request: the service may have acted


def failure_error(service: str, failure: Failure, detail: str) -> tuple[ServiceError, str]:
    """The one rule: the error a failure raises, and its ``code`` metric label. An
    HTTP error status is no failure here: it is returned, and ``expect`` makes it
    ``http_<code>``; the refusal it means is ``tracking.refusals``' to decide."""
    timed_out = failure in (Failure.CONNECT_TIMEOUT, Failure.READ_TIMEOUT)
    reason = "timeout" if timed_out else "connection"
    reached = failure in (Failure.READ_TIMEOUT, Failure.LOST)
    return ServiceError(service, reason, detail, maybe_processed=reached), reason


Headers = dict[str, str]


def prepare(route: str, path_params: dict[str, str] | None,
            json_body: Any) -> tuple[str, bytes | None, Headers]:
    """The path (``route`` filled in, ids quoted), the JSON body and the headers."""
    path = route.format(**{k: quote(v, safe="") for k, v in (path_params or {}).items()})
    data = None if json_body is None else dumps_json(json_body)
    headers = {"Accept": "application/json, text/plain"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    return path, data, headers


def record(service: str, method: str, route: str, code: str, started: float) -> None:
    """Count one call by its route template and outcome code."""
    metrics.REST_REQUESTS.labels(service, method, route, code).inc()
    metrics.REST_DURATION.labels(service, method, route).observe(time.monotonic() - started)


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
        path, data, headers = prepare(route, path_params, json_body)
        started = time.monotonic()
        code = "error"
        try:
            raw = self.session.request(
                method, self.base_url + path, params=params, data=data, headers=headers,
                timeout=timeout or self.timeout, allow_redirects=False,
            )
            code = str(raw.status_code)
        except requests.Timeout as exc:
            failure = Failure.CONNECT_TIMEOUT if isinstance(exc, requests.ConnectTimeout) \
                else Failure.READ_TIMEOUT
            error, code = failure_error(self.service, failure, str(exc))
            raise error from None
        except requests.RequestException as exc:
            failure = Failure.LOST if _maybe_processed(exc) else Failure.NOT_CONNECTED
            error, code = failure_error(self.service, failure, type(exc).__name__)
            raise error from None
        finally:
            record(self.service, method, route, code, started)
        text = raw.text
        return Response(raw.status_code,
                        decode_body(raw.content, raw.headers.get("Content-Type", ""), text), text)

    def close(self) -> None:
        self.session.close()


def _maybe_processed(exc: requests.RequestException) -> bool:
    """False only when the request surely never reached the service (no connection)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return not isinstance(reason, NewConnectionError | ConnectTimeoutError | NameResolutionError)


def decode_body(content: bytes, content_type: str, text: str) -> Any:
    """JSON (``Decimal`` numbers) when the service says so, else the text; None empty."""
    if not content:
        return None
    if "json" in content_type:
        try:
            return loads_json(content)
        except ValueError:
            return text
    return text


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
