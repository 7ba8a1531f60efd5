"""Bearer-token protection for mutating endpoints (constant-time comparison).

The scheme is case-insensitive (RFC 7235); the token is compared byte for byte, so a
padded token is not the token. Refusals are counted by reason and logged at most once
per ``LOG_INTERVAL_SECONDS`` with the number refused since, so a flood of bad requests
cannot flood the log. The dependency also declares FastAPI's bearer scheme, so the
OpenAPI document names it on exactly the operations that require the token.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bgmock_twin import metrics
from bgmock_twin.logs import get_logger

LOG_INTERVAL_SECONDS = 10.0

log = get_logger(__name__)


class _RefusalLog:
    """One log line per interval, carrying how many refusals it stands for."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last = -interval
        self._unlogged = 0

    def refused(self, reason: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._unlogged += 1
            if now - self._last < self._interval:
                return
            count, self._unlogged, self._last = self._unlogged, 0, now
        log.warning("api_auth_refused", reason=reason, client=client, refused=count)


_refusals = _RefusalLog(LOG_INTERVAL_SECONDS)

# Declares the scheme in the OpenAPI document only: it never refuses (auto_error off),
# the checks below do, the same way with or without it.
BEARER_SCHEME = HTTPBearer(
    auto_error=False, scheme_name="bearerAuth",
    description="TWIN_CONTROL_TOKEN; required when the twin has one set",
)

def refusal_reason(header: str, token: str) -> str | None:
    """Why an ``Authorization`` header does not carry ``token`` (None when it does)."""
    scheme, _, presented = header.partition(" ")
    if not header:
        return "missing"
    if scheme.lower() != "bearer":
        return "scheme"
    if not secrets.compare_digest(presented.encode(), token.encode()):
        return "wrong_token"
    return None


def is_authenticated(request: Request) -> bool:
    """Whether the request presents the configured token (False with no token set).

    The request limits use it to keep the operator's budget apart from anybody
    else's: behind an ingress every client has the same address.
    """
    token: str | None = request.app.state.control_token
    if token is None:
        return False
    return refusal_reason(request.headers.get("authorization", ""), token) is None


def require_token(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)] = None,
) -> None:
    """FastAPI dependency: 401 unless the configured control token is presented.

    With no token configured every caller is allowed (the daemon refuses to start
    beyond loopback without one unless explicitly told otherwise).
    """
    token: str | None = request.app.state.control_token
    if token is None:
        return
    reason = refusal_reason(request.headers.get("authorization", ""), token)
    if reason is None:
        return
    metrics.API_AUTH_FAILURES.labels(reason=reason).inc()
    _refusals.refused(reason, request.client.host if request.client else "unknown")
    raise HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail="missing or wrong bearer token",
        headers={"WWW-Authenticate": "Bearer"},
    )
