"""What a process holds, read from /proc: threads, open file descriptors, sockets.

Used by the fault suite to show that a misbehaving peer does not make the daemon
pile up threads or connections.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Footprint:
    threads: int
    fds: int
    sockets: int

    def __str__(self) -> str:
        return f"threads={self.threads} fds={self.fds} sockets={self.sockets}"


def footprint(pid: int) -> Footprint:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = next(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("Threads:"))
    fds = sockets = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        fds += 1
        try:
            if os.readlink(entry.path).startswith("socket:"):
                sockets += 1
        except OSError:  # closed while we looked
            continue
    return Footprint(threads, fds, sockets)


def peak(samples: list[Footprint]) -> Footprint:
    return Footprint(max(s.threads for s in samples), max(s.fds for s in samples),
                     max(s.sockets for s in samples))


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) * 1024 for line in status.splitlines()
                if line.startswith("VmRSS:"))
