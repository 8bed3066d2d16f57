"""BLAKE3 over file descriptors: the one hashing of whole files and of challenge ranges.

The store, the pool and the ``/.requests`` client all hash the same way, so
it is written once here, below every layer. Reads go in ``IO_BUFFER``
pieces: memory stays flat whatever the file's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import blake3

from . import linux

IO_BUFFER = 1 << 20  # bytes per read or write when streaming a file
EMPTY_DIGEST = blake3.blake3(b"").digest()
ZEROS = memoryview(bytes(IO_BUFFER))  # what every hole hashes as (read-only, shared by all threads)

Range = tuple[int, int]  # (offset, length)
Pread = Callable[[int, int], bytes]  # (length, offset) -> bytes, as os.pread without the descriptor


def hash_fd(fd: int, on_read: Callable[[int], object] | None = None, size: int | None = None) -> tuple[bytes, int]:
    """BLAKE3 and size of a file's first ``size`` bytes, or of all it has at the start (``on_read(n)`` after each
    piece; it may raise to stop).

    Holes are not read: BLAKE3 still
    has to hash their zeros (a chunk's position enters its hash, so no run of
    zeros can be hashed once for all), but from one shared buffer, which
    stays in the processor's cache, instead of zeros the kernel copies out.
    """
    hasher = blake3.blake3()
    size = os.fstat(fd).st_size if size is None else min(size, os.fstat(fd).st_size)
    for start, length, is_data in linux.extents(fd, 0, size):
        offset, end = start, start + length
        while offset < end:
            want = min(IO_BUFFER, end - offset)
            piece = os.pread(fd, want, offset) if is_data else ZEROS[:want]
            if not piece:  # the file shrank under us: it ends here
                return hasher.digest(), offset
            hasher.update(piece)
            offset += len(piece)
            if on_read is not None:
                on_read(len(piece))
    return hasher.digest(), size


def hash_ranges(pread: Pread, ranges: list[Range]) -> bytes:
    """The BLAKE3 of the listed ranges, concatenated in order (a proof-of-access answer).

    ``pread(length, offset)`` reads from the content; EOFError when the
    content is shorter than a range.
    """
    hasher = blake3.blake3()
    for offset, size in ranges:
        data = pread(size, offset)
        if len(data) != size:
            raise EOFError(f"the content ends before the range {offset}+{size}")
        hasher.update(data)
    return hasher.digest()


def fd_reader(fd: int) -> Pread:
    """``pread`` over an open descriptor, for ``hash_ranges``."""
    return lambda size, offset: os.pread(fd, size, offset)

