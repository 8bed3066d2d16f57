"""What fusestore tells the kernel, shared with the benchmark's bare passthrough (``scripts/passthrough.py``).

Both must run with the same settings, or the passthrough is no ceiling.
Entries and attributes are cached long because every change reaches the
daemon through the kernel, which updates its own caches; a change it did
not make (a proof-of-access link) is invalidated explicitly.
"""

from __future__ import annotations

import os

from ..store import reserved
from ..store.names import NAME_MAX
from ..store.setid import cleared_by_write

CACHE_SECONDS = 300.0  # entry and attribute timeouts
BLOCK_SIZE = 1 << 17  # st_blksize: what tools use as their I/O size
PID_XATTR = reserved.PID_XATTR

__all__ = ["BLOCK_SIZE", "CACHE_SECONDS", "NAME_MAX", "PID_XATTR", "uses_direct_io"]


def uses_direct_io(flags: int, mode: int) -> bool:
    """Write-only handles bypass the page cache: their writes reach the daemon straight from the writer's buffer.

    That about doubles their speed here, and caches no page that nobody
    reads. Such a handle cannot be mmapped anyway, and the kernel drops the
    cached pages of the ranges it writes, so readers through other handles
    stay coherent.

    Not on a file with set-ID bits a write may clear (``mode``): through the
    page cache the kernel clears them itself, for exactly the writers that
    lack CAP_FSETID; a direct write only carries FUSE_WRITE_KILL_SUIDGID
    for the filesystem to act on, and libfuse 3 does not pass that flag on
    (``callers`` explains what the daemon does for bits set after the open).
    """
    return flags & os.O_ACCMODE == os.O_WRONLY and not cleared_by_write(mode)
