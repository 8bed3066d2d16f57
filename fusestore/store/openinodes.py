"""Which inodes this process has open, and which of them were unlinked while open (orphans).

An unlinked inode lives on (nlink 0) while any handle is open on it, so that
its descriptors keep working, and goes at its last close. The catalog lists
orphans too, so that recovery deletes those a crash left; this in-memory
view is what decides, at an unlink, whether the inode goes now or later.
"""

from __future__ import annotations

import threading
from collections import Counter


class OpenInodes:
    def __init__(self) -> None:
        self._open: Counter[int] = Counter()
        self._orphans: set[int] = set()
        self._lock = threading.Lock()

    def opened(self, ino: int) -> None:
        with self._lock:
            self._open[ino] += 1

    def closed(self, ino: int) -> bool:
        """One handle less; True when that was the last handle of an orphan, which must now go."""
        with self._lock:
            self._open[ino] -= 1
            if self._open[ino] > 0:
                return False
            del self._open[ino]
            if ino not in self._orphans:
                return False
            self._orphans.discard(ino)
            return True

    def is_open(self, ino: int) -> bool:
        with self._lock:
            return self._open[ino] > 0

    def orphaned(self, ino: int) -> None:
        with self._lock:
            self._orphans.add(ino)

    def is_orphan(self, ino: int) -> bool:
        """Whether the last close of ``ino`` deletes it (and so may take long)."""
        with self._lock:
            return ino in self._orphans
