"""A small filesystem the tests can fill: a ``tmpfs`` of a few MiB mounted on a
directory (the tests run as root), unmounted afterwards even when a test fails.

``fill()`` writes a filler file until the filesystem says ENOSPC, ``free()`` removes
it: a disk that becomes full and gets its space back, with every other file on it
(an SQLite ledger, its WAL) left as the program wrote it.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHUNK = 64 * 1024


class SmallDisk:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def free_bytes(self) -> int:
        stats = os.statvfs(self.path)
        return stats.f_bavail * stats.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write the filler until the disk is full (or only ``leave`` bytes are free)."""
        with self.filler.open("ab", buffering=0) as out:  # unbuffered: nothing left to flush
            size = CHUNK
            while size >= 512 and self.free_bytes() > leave:
                try:
                    out.write(b"\0" * min(size, max(512, self.free_bytes() - leave)))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    size //= 2  # the last bytes, in ever smaller pieces

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@contextmanager
def small_disk(mount_point: Path, size_mib: int) -> Iterator[SmallDisk]:
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs",
                    str(mount_point)], check=True, capture_output=True, timeout=30)
    try:
        yield SmallDisk(mount_point)
    finally:
        done = subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30)
        if done.returncode != 0:  # still in use by a process a failed test left: detach
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)
