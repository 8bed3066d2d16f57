"""When the process is stopping: long hashing and copying give up instead of holding the shutdown.

A commit of a huge file (``truncate -s 10T f`` then close) hashes for
minutes; the daemon must still stop on SIGTERM or unmount. ``stop_after``
gives work in flight a grace period, then every ``check`` raises
``Interrupted``: the commit fails with EIO, its staging file stays
recorded, and recovery at the next open finishes it. Called between pieces
of work, never inside a catalog transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .. import errors


class Stopping:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._deadline: float | None = None
        self._lock = threading.Lock()

    def stop_after(self, grace: float) -> None:
        """Long work that is still running ``grace`` seconds from now gives up (an earlier deadline stays)."""
        with self._lock:
            deadline = self._clock() + grace
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline

    def check(self, _progress: int = 0) -> None:
        """Raise ``Interrupted`` once the deadline has passed (a progress callback of ``digests.hash_fd``)."""
        deadline = self._deadline
        if deadline is not None and self._clock() >= deadline:
            raise errors.Interrupted("the daemon is stopping; recovery at the next mount finishes this commit")
