"""BLAKE3 over file descriptors: the one hashing of whole files and of challenge ranges.

The store, the pool and the ``/.requests`` client all hash the same way, so
it is written once here, below every layer. Reads go in ``IO_BUFFER``
pieces: memory stays flat whatever the file's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import blake3

IO_BUFFER = 1 << 20  # bytes per read or write when streaming a file
EMPTY_DIGEST = blake3.blake3(b"").digest()

Range = tuple[int, int]  # (offset, length)
Pread = Callable[[int, int], bytes]  # (length, offset) -> bytes, as os.pread without the descriptor


def hash_fd(fd: int, on_read: Callable[[int], object] | None = None) -> tuple[bytes, int]:
    """BLAKE3 and size of everything readable from ``fd``, from offset 0 (``on_read(n)`` after each piece)."""
    hasher = blake3.blake3()
    offset = 0
    while chunk := os.pread(fd, IO_BUFFER, offset):
        hasher.update(chunk)
        offset += len(chunk)
        if on_read is not None:
            on_read(len(chunk))
    return hasher.digest(), offset


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

