"""Durations as people write them (``30s``, ``2m``, ``1h30m``, ``500ms``, ``90``).

``--duration`` is sent to the twin as seconds; the twin turns it into the count its
profile has due within them (the client does no pacing arithmetic of its own).
"""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``30s``, ``2m``, ``1h30m``, ``1.5s``, ``500ms`` or a bare
    number of seconds. Raises ``ValueError`` for anything else, zero included."""
    value = text.strip().lower()
    if _NUMBER.fullmatch(value):
        seconds = float(value)
    elif _WHOLE.fullmatch(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(value))
    else:
        raise ValueError(f"not a duration: {text!r} (write 30s, 2m, 1h30m, 500ms or seconds)")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"a duration must be more than zero: {text!r}")
    return seconds
