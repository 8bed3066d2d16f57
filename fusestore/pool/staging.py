"""The staging area: the local write buffer, whatever the blob store behind it.

Every byte a store receives is first written to a staging file (a put
streams into one; an open file's writes go to its inode's staging file), and
only a complete staging file is ever stored as a blob. The staging area is
always a local directory, ``<store>/staging``, one file per staging name (32
hex digits); it stays local when blobs live elsewhere. Its descriptors never
leave this package: callers read, write and hash through ``StagingFile``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import BinaryIO

import blake3

from .. import linux, private
from ..digests import IO_BUFFER, hash_fd

HOLE_CHECK_MIN = 64 << 10  # reads from this size first ask whether they fall in a hole


class ShortRead(Exception):
    """The reader ended before the announced length."""


class StagingFile:
    """One staging file, open for reading and writing."""

    def __init__(self, area: "StagingArea", name: str, fd: int) -> None:
        self.area = area
        self.name = name
        self.path = area.path_of(name)
        self._fd = fd

    def fileno(self) -> int:
        """The descriptor, for the blob stores of this package only."""
        return self._fd

    def write(self, data: bytes, offset: int) -> int:
        return os.pwrite(self._fd, data, offset)

    def read(self, size: int, offset: int) -> bytes:
        """``size`` bytes at ``offset``, fewer where the file ends.

        A large read that falls wholly in a hole is not made: a pread of a
        hole costs the kernel about 2 s per GiB here (it fills fresh pages
        with zeros), zeros made in memory almost nothing.
        """
        if size >= HOLE_CHECK_MIN and next(self.extents(offset, offset + size)) == (offset, size, False):
            return bytes(max(0, min(offset + size, self.size()) - offset))
        return os.pread(self._fd, size, offset)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def sync(self) -> None:
        """Make the bytes written so far durable, and the file's name (fsync of the file and the area)."""
        os.fsync(self._fd)
        linux.fsync_path(self.area.root)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def block_size(self) -> int:
        """The filesystem's allocation block: a write fills whole ones (see ``extents``)."""
        return os.fstat(self._fd).st_blksize

    def extents(self, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, is_data) of what was written and the holes between ``start`` and ``end``."""
        return linux.extents(self._fd, start, end)

    def modified_ns(self) -> int:
        """When the file was last written (recovery keeps it as the mtime of what it commits)."""
        return os.fstat(self._fd).st_mtime_ns

    def set_modified_ns(self, mtime_ns: int) -> None:
        """Make ``mtime_ns`` the file's mtime: the one recovery keeps, so it must be the one reported."""
        os.utime(self._fd, ns=(mtime_ns, mtime_ns))

    def start_writeback(self, offset: int, length: int) -> None:
        """Start writing a range to disk without waiting, so that a later sync finds little to do."""
        linux.start_writeback(self._fd, offset, length)

    def hash(self, on_read: Callable[[int], object] | None = None, size: int | None = None) -> tuple[bytes, int]:
        """BLAKE3 and size of the whole file, or its first ``size`` bytes; ``on_read`` as ``hash_fd``'s."""
        return hash_fd(self._fd, on_read, size)

    def fill(self, reader: BinaryIO, length: int) -> tuple[bytes, int]:
        """Copy ``reader`` into this (empty) file, hashing as it goes: (digest, size).

        ``length == -1`` reads to EOF; otherwise exactly ``length`` bytes are
        taken and a reader that ends early raises ShortRead. Memory use is one
        buffer, whatever the size.
        """
        hasher = blake3.blake3()
        total = 0
        while length < 0 or total < length:
            want = IO_BUFFER if length < 0 else min(IO_BUFFER, length - total)
            data = reader.read(want)
            if not data:
                if length >= 0:
                    raise ShortRead(f"reader ended after {total} of {length} bytes")
                break
            hasher.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            total += len(data)
        return hasher.digest(), total

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class StagingArea:
    """Staging files under one local directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        private.make_dirs(self.root)

    def path_of(self, name: str) -> str:
        return f"{self.root}/{name}"  # a plain string: pathlib costs more than the syscalls here

    def create(self) -> StagingFile:
        """A new, empty staging file with a unique name."""
        while True:
            name = secrets.token_hex(16)
            try:
                fd = private.open_file(self.path_of(name), os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                continue
            return StagingFile(self, name, fd)

    def reopen(self, name: str) -> StagingFile | None:
        """A staging file a crashed process left, or None when it is gone."""
        try:
            fd = os.open(self.path_of(name), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return StagingFile(self, name, fd)

    def discard(self, staged: StagingFile) -> None:
        staged.close()
        self.discard_name(staged.name)

    def discard_name(self, name: str) -> None:
        """Remove a staging file by name, with the spare name a blob store may have made beside it (first)."""
        for path in (self.path_of(name + SPARE_SUFFIX), self.path_of(name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def names(self) -> list[str]:
        """The staging names present, a spare name counting as its staging file's (a crash may leave one alone)."""
        return sorted({name.removesuffix(SPARE_SUFFIX) for name in os.listdir(self.root)})


SPARE_SUFFIX = ".blob"  # a second name a local blob store gives a staging file for an instant (see local.py)
