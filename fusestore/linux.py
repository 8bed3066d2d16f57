"""Linux calls that Python's os module lacks (writeback hints, syncfs, space reservation, statfs), and extents.

Each is None (or falls back) where libc lacks it, so the store still runs,
more slowly or with less protection, elsewhere.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable, Iterator
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
_statfs = _libc_function("statfs", [ctypes.c_char_p, ctypes.c_void_p])

# Filesystems whose syncfs(2) flushes what was written to them (their magic numbers, from statfs(2)).
# FUSE, NFS, CIFS and overlay filesystems are not among them: there syncfs may flush nothing.
SYNCFS_FLUSHES = {
    0xEF53: "ext2/3/4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0xF2F52010: "f2fs", 0x2FC12FC1: "zfs",
    0x01021994: "tmpfs",  # nothing to flush: tmpfs never survives a power loss anyway
}


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``: a pwrite may write less than it was given."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


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


def syncfs_path(directory: str | os.PathLike[str]) -> None:
    """``syncfs`` of the filesystem holding ``directory`` (a barrier of a store's packs or blobs)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def reserve_beyond_end(fd: int, length: int) -> None:
    """Allocate disk blocks for the ``length`` bytes after the file's end, without changing its size.

    Later writes that extend the file into them cannot fail for lack of space.
    Raises OSError (EOPNOTSUPP where the filesystem cannot, ENOSPC when full).
    """
    if _fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "fallocate is not available")
    _check(_fallocate(fd, FALLOC_FL_KEEP_SIZE, os.fstat(fd).st_size, length))


def filesystem_magic(path: str) -> int | None:
    """The f_type of the filesystem holding ``path`` (statfs(2)); None where libc lacks statfs."""
    if _statfs is None:
        return None
    buffer = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    _check(_statfs(os.fsencode(path), buffer))
    return int.from_bytes(buffer.raw[:ctypes.sizeof(ctypes.c_long)], sys.byteorder, signed=True) & 0xFFFFFFFF


def syncfs_flushes(path: str) -> bool:
    """Whether syncfs of the filesystem holding ``path`` makes its writes durable."""
    return filesystem_magic(path) in SYNCFS_FLUSHES


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or directory by path: what makes a directory's entries durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def boot_id() -> bytes:
    """The 16 bytes that name this boot of the kernel: they change with every restart, power losses included."""
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
        return bytes.fromhex(file.read().strip().replace("-", ""))


def extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) of the data and the holes of a file between ``start`` and ``end``.

    From SEEK_DATA/SEEK_HOLE: a hole reads as zeros and takes no disk, so
    whoever hashes or copies a sparse file need not read it. Where the
    filesystem cannot tell (EINVAL), everything is data.
    """
    offset = start
    while offset < end:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end of the file
                data = end
            elif exc.errno == errno.EINVAL:
                yield offset, end - offset, True
                return
            else:
                raise
        data = min(data, end)
        if data > offset:
            yield offset, data - offset, False
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data, True
        offset = hole
