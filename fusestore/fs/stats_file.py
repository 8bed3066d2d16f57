"""``/.stats``: the live daemon's statistics as a read-only JSON file in ``/``.

``fusestore stats MOUNTPOINT`` reads it, so that the command needs neither
the store's lock nor LMDB: the daemon owns the store, and only it sees its
latest commits. Each open takes a fresh snapshot (``store.stats.of_store``,
one catalog read transaction) and every read of that handle returns slices
of the same bytes, so a reader never sees two snapshots stitched together.
``getattr`` reports the length of a fresh snapshot's JSON. What a snapshot
shows depends on who opens it (``store.stats``: only the environments the
reader owns, and the totals unless the store's tenancy withholds them).

The snapshot is computed on the event loop (the virtual-file interface is
synchronous): about 55 ms for 10,000 files. It is kept until the catalog
commits again, so a stat or a listing of ``/`` on a quiet store costs
nothing; on a busy store of millions of files it would want a worker thread.

Root owns the file, mode 0444; opening it for writing is EACCES, for root
too (the kernel lets root past the mode bits, this does not).
"""

from __future__ import annotations

import errno
import os
import stat
import time

import pyfuse3

from ..store import Store
from ..store.attributes import Attributes
from ..store.owners import Owner
from ..store.stats import of_store
from .virtual import VirtualError, VirtualTree, inode_range

STATS_NAME = b".stats"
STATS_INODES = inode_range(1)
STATS_INO = STATS_INODES.start


class Snapshot:
    """An open ``/.stats``: the bytes of the snapshot taken at open."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset:offset + size]

    def write(self, offset: int, data: bytes) -> int:
        raise VirtualError(errno.EBADF, "/.stats is open for reading only")

    def flush(self) -> None:
        pass

    def release(self) -> None:
        pass


class StatsFile(VirtualTree):
    """The one file ``/.stats``; unlink, setattr and xattr writes are refused by the defaults (EPERM)."""

    names = (STATS_NAME,)
    inodes = STATS_INODES

    def __init__(self, store: Store) -> None:
        self.store = store
        self._last: tuple[tuple[int, int], bytes] | None = None  # ((last commit, reader uid), its JSON)

    def snapshot(self, caller: Owner) -> bytes:
        key = (self.store.catalog.last_commit(), caller.uid)
        if self._last is None or self._last[0] != key:
            self._last = (key, of_store(self.store, reader_uid=caller.uid).to_json())
        return self._last[1]

    def attributes(self, size: int) -> Attributes:
        now = time.time_ns()  # the content is new at every look
        return Attributes(STATS_INO, stat.S_IFREG | 0o444, 0, 0, nlink=1, size=size,
                          atime_ns=now, mtime_ns=now, ctime_ns=now)

    def lookup(self, parent: int, name: bytes, caller: Owner) -> Attributes:
        if parent == pyfuse3.ROOT_INODE and name == STATS_NAME:
            return self.attributes(len(self.snapshot(caller)))
        raise VirtualError(errno.ENOTDIR if parent == STATS_INO else errno.ENOENT)

    def getattr(self, ino: int, caller: Owner) -> Attributes:
        if ino != STATS_INO:
            raise VirtualError(errno.ENOENT, f"no inode {ino} in /.stats")
        return self.attributes(len(self.snapshot(caller)))

    def open(self, ino: int, flags: int, caller: Owner) -> Snapshot:
        if ino != STATS_INO:
            raise VirtualError(errno.ENOENT, f"no inode {ino} in /.stats")
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise VirtualError(errno.EACCES, "/.stats is read-only")
        return Snapshot(self.snapshot(caller))
