"""Errors the domain raises for a request it cannot carry out, free of HTTP.

The control API (``api/errors.py``) maps each to its status code in one place, so
nothing below the HTTP layer needs FastAPI to refuse a request. A component defines
its own refusals on these bases (``tracking.service.SenderBusy`` is an
``Unavailable``); the message is what the caller is told.
"""

from __future__ import annotations


class RequestRefused(Exception):
    """A request the twin understood but will not carry out; the message says why."""


class InvalidRequest(RequestRefused):
    """The request is well-formed but asks for something that cannot be (422)."""


class NotFound(RequestRefused):
    """The request names something the twin does not know (404)."""


class Conflict(RequestRefused):
    """The request clashes with the twin's current state (409)."""


class NotInThisMode(Conflict):
    """The request needs a part the twin does not run in its current mode (409)."""


class Unavailable(RequestRefused):
    """Something the request needs is unreachable or busy right now; retry later (503)."""
