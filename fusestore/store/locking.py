"""One process owns a store: an exclusive flock on ``<store>/lock``.

The kernel drops a flock when its process dies, however it dies, so a lock
left by a killed daemon is taken over by the next open with no guessing
about stale pid files. The pid written into the file is only for the error
message that names the current owner.

Inspections (fsck, stats) take the same lock shared, and never write the
file (``InspectionLock``): several may run at once, none while a daemon owns
the store, and no daemon can start while one runs.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .. import errors, private


def _pid_in(fd: int) -> str:
    """The pid the owner wrote ("" when the file holds none: a released store, or inspections)."""
    return os.pread(fd, 32, 0).decode("ascii", "replace").strip()


def _owner(pid: str) -> str:
    return f"process {pid}" if pid else "process unknown (no pid recorded: an inspection such as fsck?)"


class StoreLock:
    def __init__(self, store_path: Path) -> None:
        self.path = Path(store_path) / "lock"
        self.fd = private.open_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(_pid_in(self.fd))
            os.close(self.fd)
            raise errors.StoreLocked(
                f"store {store_path} is in use by {owner}; unmount it or stop that process first"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


class InspectionLock:
    """A shared flock on ``<store>/lock`` for as long as an inspection looks at the store.

    The file is opened read-only: never created, truncated or written. A
    missing file means no process ever owned the store, or none owns it now
    (a live owner keeps its file), and there is nothing to lock.

    A live owner (a daemon, or a ``Store`` open in some process) means the
    store changes while it is looked at, so an inspection is refused by
    default with ``StoreLocked`` naming the owner's pid. With
    ``allow_live=True`` the caller looks anyway: ``live`` is then True, and
    the catalog must be read with a registered LMDB reader, which sees one
    consistent transaction; the pool and staging directories, read outside
    it, may then differ from that snapshot by whatever the owner did since.
    """

    def __init__(self, store_path: Path, *, allow_live: bool = False) -> None:
        self.path = Path(store_path) / "lock"
        self.live = False
        self.owner_pid: int | None = None
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.fd = -1
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(self.fd)
            os.close(self.fd)
            self.fd = -1
            if not allow_live:
                raise errors.StoreLocked(
                    f"store {store_path} is in use by {_owner(pid)}; unmount it first, or inspect it live"
                ) from None
            self.live = True
            self.owner_pid = int(pid) if pid.isdigit() else None

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
