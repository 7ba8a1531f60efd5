"""Errors the domain raises for a request it cannot carry out, free of HTTP.

The control API (``api/errors.py``) maps each to its status code, so nothing below the
HTTP layer needs FastAPI to refuse a request.
"""

from __future__ import annotations


class RequestRefused(Exception):
    """A request the twin understood but will not carry out; the message says why."""


class NotInThisMode(RequestRefused):
    """The request needs a part the twin does not run in its current mode (409)."""


class InvalidRequest(RequestRefused):
    """The request is well-formed but names something that does not exist (422)."""
