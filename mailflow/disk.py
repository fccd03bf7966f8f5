"""Disk: how much room is left, and the one hook every write of ours passes through.

Two reasons for a seam this small:
- the listener refuses mail (`452 4.3.1`) below `[service] min_free_mb` and resumes by
  itself when space returns; it asks `free_bytes` (statvfs) at every MAIL, which costs a
  system call;
- tests make writes fail with ENOSPC without filling a real disk: a subclass of `Disk`
  whose `before_write` raises, handed to `Store`, `Spool` and `Outbox` (their `disk`
  attribute). One real small-tmpfs test checks that the real errors take the same paths.
"""

from __future__ import annotations

import os
from pathlib import Path


class Disk:
    """The real disk: statvfs for free space; writes are not interfered with."""

    def free_bytes(self, path: Path) -> int:
        """Bytes an unprivileged writer may still use on the file system holding `path`."""
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize

    def before_write(self, path: Path, size: int) -> None:
        """Called before writing `size` bytes to `path` (or creating it). The fault hook:
        a test's subclass raises OSError(ENOSPC) here; the real disk does nothing."""


REAL = Disk()


def room_for(disk: Disk, path: Path, floor_bytes: int) -> bool:
    """True while the file system of `path` has more than `floor_bytes` free.

    An unreadable statvfs counts as room: refusing all mail because a statistics call
    failed would be worse than the fault it guards against.
    """
    if floor_bytes <= 0:
        return True
    try:
        return disk.free_bytes(path) > floor_bytes
    except OSError:
        return True
