"""Bearer-token protection for mutating endpoints (constant-time comparison)."""

from __future__ import annotations

import secrets

from fastapi import HTTPException, Request, status


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 unless the configured control token is presented.

    With no token configured every caller is allowed (the daemon refuses to start
    beyond loopback without one unless explicitly told otherwise).
    """
    token = request.app.state.control_token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(
        presented.strip().encode(), token.encode()
    ):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
