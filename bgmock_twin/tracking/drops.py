"""One log line per burst of dropped payments, not one per payment.

A payment is dropped when it is due and no sender slot is free (or the twin's
accounts are not there): under overload that is hundreds a second, and a line each
would drown the log. ``DropBursts`` (one per run) counts the drops of a burst and
gives one line when the burst ends (the next payment sent, or the run's end), at
most one line per ``interval`` seconds while drops go on, each with how many
payments it stands for and why. Pure: the caller passes monotonic times and logs
what it is given.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

LINE_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class DropLine:
    count: int  # payments dropped since the previous line
    reason: str  # the most frequent reason among them
    reasons: int  # how many different reasons
    seconds: float  # from the first to the last drop the line stands for


@dataclass
class DropBursts:
    interval: float = LINE_INTERVAL_SECONDS
    _count: int = 0
    _reasons: Counter[str] = field(default_factory=Counter)
    _first: float = 0.0
    _last: float = 0.0
    _line_at: float | None = None

    def dropped(self, reason: str, now: float) -> DropLine | None:
        """Count one drop; a line when drops have gone on for ``interval`` since the
        last line (a long burst is still reported while it lasts)."""
        if self._count == 0:
            self._first = now
        self._count += 1
        self._reasons[reason] += 1
        self._last = now
        since = self._first if self._line_at is None else max(self._first, self._line_at)
        if now - since >= self.interval:
            return self._take(now)
        return None

    def sent(self, now: float) -> DropLine | None:
        """A payment left: the burst before it is over; its line unless one was given
        less than ``interval`` ago (then the count waits for the next line)."""
        if self._count and (self._line_at is None or now - self._line_at >= self.interval):
            return self._take(now)
        return None

    def flush(self, now: float) -> DropLine | None:
        """The run ended: whatever is counted gets its line."""
        return self._take(now) if self._count else None

    def _take(self, now: float) -> DropLine:
        reason, _ = self._reasons.most_common(1)[0]
        line = DropLine(self._count, reason, len(self._reasons), round(self._last - self._first, 3))
        self._count = 0
        self._reasons = Counter()
        self._line_at = now
        return line
