"""Linux calls that Python's os module lacks, through libc: writeback hints, syncfs, space reservation.

Each is None (or falls back) where libc lacks it, so the store still runs,
more slowly or with less protection, elsewhere.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from typing import cast

SYNC_FILE_RANGE_WRITE = 2
FALLOC_FL_KEEP_SIZE = 1


def _libc_function(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    return cast(Callable[..., int], function)


_sync_file_range = _libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
_syncfs = _libc_function("syncfs", [ctypes.c_int])
_fallocate = _libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range of a file to disk without waiting (a hint: nothing where unsupported)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def syncfs(fd: int) -> None:
    """Make everything written to the filesystem holding ``fd`` durable; a full sync where syncfs is missing."""
    if _syncfs is None:
        os.sync()
    else:
        _check(_syncfs(fd))


def reserve_beyond_end(fd: int, length: int) -> None:
    """Allocate disk blocks for the ``length`` bytes after the file's end, without changing its size.

    Later writes that extend the file into them cannot fail for lack of space.
    Raises OSError (EOPNOTSUPP where the filesystem cannot, ENOSPC when full).
    """
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    _check(_fallocate(fd, FALLOC_FL_KEEP_SIZE, os.fstat(fd).st_size, length))
