"""One process owns a store: an exclusive flock on ``<store>/lock``.

The kernel drops a flock when its process dies, however it dies, so a lock
left by a killed daemon is taken over by the next open with no guessing
about stale pid files. The pid written into the file is only for the error
message that names the current owner.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .. import errors


class StoreLock:
    def __init__(self, store_path: Path) -> None:
        self.path = Path(store_path) / "lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(self.fd)
            raise errors.StoreLocked(
                f"store {store_path} is in use by process {owner}; unmount it or stop that process first"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
