"""A disk that fills up on command: the fault hook of `mailflow.disk` for tests.

    disk = FaultyDisk()
    store.disk = spool.disk = outbox.disk = disk
    disk.full = True            # every write under data_dir fails with ENOSPC
    disk.full_under = data_dir / "db"   # ...or only writes below this directory
    disk.free = 5 * 2**20       # statvfs reports 5 MiB free (None: the real number)

No mock library: `Disk` is the seam the edge modules call before each write and for free
space. One test (test_edge_disk.py) checks the same paths on a real, small tmpfs.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mailflow.disk import Disk


class FaultyDisk(Disk):
    def __init__(self) -> None:
        self.full = False
        self.full_under: Path | None = None
        self.free: int | None = None
        self.refused = 0  # writes refused so far

    def free_bytes(self, path: Path) -> int:
        if self.free is not None:
            return self.free
        return super().free_bytes(path)

    def before_write(self, path: Path, size: int) -> None:
        if not self.full:
            return
        if self.full_under is not None and self.full_under not in Path(path).parents:
            return
        self.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
