"""The staging area: the local write buffer, whatever the blob store behind it.

Every byte a store receives is first written to a staging file (a put
streams into one; an open file's writes go to its inode's staging file), and
only a complete staging file is ever stored as a blob. The staging area is
always local, ``<store>/staging``, one file per staging name (32 hex
digits); it stays local when blobs live elsewhere. A file asked for as
small lives in the store's memory staging directory instead while it stays
small (``memory_staging``), under the same name, and moves to the disk when
it grows, when it is synced, or when memory is short. Its descriptors never
leave this package: callers read, write and hash through ``StagingFile``.
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from typing import BinaryIO

import blake3

from .. import linux, private
from ..digests import IO_BUFFER, hash_fd
from . import memory_staging
from .memory_staging import MEMORY_BUDGET, MEMORY_FILE_MAX

HOLE_CHECK_MIN = 64 << 10  # reads from this size first ask whether they fall in a hole


class ShortRead(Exception):
    """The reader ended before the announced length."""


class StagingFile:
    """One staging file, open for reading and writing."""

    def __init__(self, area: "StagingArea", name: str, fd: int, *, in_memory: bool = False) -> None:
        self.area = area
        self.name = name
        self._fd = fd
        self.in_memory = in_memory
        self.held = 0  # bytes of the memory budget this file holds: the most it held while in memory

    @property
    def path(self) -> str:
        return self.area.path_of(self.name, in_memory=self.in_memory)

    def fileno(self) -> int:
        """The descriptor, for the blob stores of this package only."""
        return self._fd

    def write(self, data: bytes, offset: int) -> int:
        if not self.in_memory:
            return os.pwrite(self._fd, data, offset)
        written = 0
        if self.area.keeps_in_memory(self, offset + len(data)):
            try:
                written = os.pwrite(self._fd, data, offset)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
            if written == len(data):
                return written
        self.area.move_to_disk(self)  # too big, or memory is full (a short write there): the disk takes the rest
        return written + os.pwrite(self._fd, memoryview(data)[written:], offset + written)

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
        if self.in_memory and not self.area.keeps_in_memory(self, size):
            self.area.move_to_disk(self)
        os.ftruncate(self._fd, size)

    def sync(self) -> None:
        """Make the bytes written so far durable, and the file's name (fsync of the file and the area).

        A file in memory moves to the disk first: a power loss takes memory.
        """
        if self.in_memory:
            self.area.move_to_disk(self)
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
        self.area.release(self)

    def replace_descriptor(self, fd: int) -> None:
        """Make this file's descriptor name what ``fd`` names (atomically: a reader on a thread sees either)."""
        os.dup2(fd, self._fd, inheritable=False)


class StagingArea:
    """Staging files under one local directory, and the small ones in a memory directory beside it."""

    def __init__(self, root: str | os.PathLike[str], memory: str | None = None) -> None:
        """``memory``: the store's memory staging directory (``memory_staging.memory_root``), None for none."""
        self.root = os.fspath(root)
        private.make_dirs(self.root)
        self.memory = memory
        self._in_memory = 0  # bytes the files in memory hold of the budget
        self._lock = threading.Lock()

    def path_of(self, name: str, *, in_memory: bool = False) -> str:
        root = self.memory if in_memory and self.memory is not None else self.root
        return f"{root}/{name}"  # a plain string: pathlib costs more than the syscalls here

    def create(self, *, small: bool = False) -> StagingFile:
        """A new, empty staging file with a unique name; in memory if ``small`` and there is room."""
        in_memory = small and self.memory is not None and self._in_memory < MEMORY_BUDGET
        while True:
            name = secrets.token_hex(16)
            try:
                fd = private.open_file(self.path_of(name, in_memory=in_memory), os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                continue
            except OSError:
                if not in_memory:
                    raise
                in_memory = False  # memory has no room for another file (or its directory went): the disk
                continue
            return StagingFile(self, name, fd, in_memory=in_memory)

    def keeps_in_memory(self, staged: StagingFile, size: int) -> bool:
        """Whether ``staged``, in memory, may grow to ``size`` there (its share of the budget grows with it)."""
        if size <= staged.held:
            return True
        if size > MEMORY_FILE_MAX:
            return False
        with self._lock:
            if self._in_memory + size - staged.held > MEMORY_BUDGET:
                return False
            self._in_memory += size - staged.held
        staged.held = size
        return True

    def release(self, staged: StagingFile) -> None:
        """``staged`` holds no memory any more (closed, or moved to the disk)."""
        with self._lock:
            self._in_memory -= staged.held
        staged.held = 0

    def move_to_disk(self, staged: StagingFile) -> None:
        """Move a staging file from memory to the disk, under its name; its descriptor then names the copy.

        The memory file goes only once the copy is whole: until then it is
        the file (``reopen`` prefers it), so a crash at any point loses nothing.
        """
        source = staged.fileno()
        status = os.fstat(source)
        size, modified = status.st_size, status.st_mtime_ns
        copy = self.path_of(staged.name)
        self._unlink(copy)  # a copy a crash cut short, which recovery would have deleted anyway
        # No O_TRUNC or ftruncate: ext4 flushes a file truncated to 0 at its close (auto_da_alloc),
        # which cost a large file 0.5 s per GiB at its commit.
        target = private.open_file(copy, os.O_RDWR | os.O_CREAT | os.O_EXCL)
        try:
            linux.pwrite_all(target, os.pread(source, size, 0), 0)  # at most MEMORY_FILE_MAX bytes, holes as zeros
            os.utime(target, ns=(modified, modified))
            staged.replace_descriptor(target)
        except BaseException:
            self._unlink(copy)  # a full disk, say: the file stays in memory, whole
            raise
        finally:
            os.close(target)
        self._unlink(self.path_of(staged.name, in_memory=True))
        staged.in_memory = False
        self.release(staged)

    def reopen(self, name: str) -> StagingFile | None:
        """A staging file a crashed process left, or None when it is gone.

        One in memory is the whole file even when the disk has one too (a
        move to the disk that a crash cut short): that copy goes.
        """
        if self.memory is not None:
            try:
                fd = os.open(self.path_of(name, in_memory=True), os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
            else:
                self._unlink(self.path_of(name))
                staged = StagingFile(self, name, fd, in_memory=True)
                with self._lock:  # over the budget, perhaps: a file reopened stays where it is
                    staged.held = os.fstat(fd).st_size
                    self._in_memory += staged.held
                return staged
        try:
            fd = os.open(self.path_of(name), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return StagingFile(self, name, fd)

    def discard(self, staged: StagingFile) -> None:
        staged.close()
        if staged.in_memory:  # it never reached the disk, nor got a spare name there
            self._unlink(self.path_of(staged.name, in_memory=True))
        else:
            self.discard_name(staged.name)

    def discard_name(self, name: str) -> None:
        """Remove a staging file by name, with the spare name a blob store may have made beside it (first)."""
        if self.memory is not None:
            self._unlink(self.path_of(name, in_memory=True))
        for path in (self.path_of(name + SPARE_SUFFIX), self.path_of(name)):
            self._unlink(path)

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def names(self) -> list[str]:
        """The staging names present, a spare name counting as its staging file's (a crash may leave one alone)."""
        return sorted(set(staging_names(self.root)) | set(staging_names(self.memory)))

    def close(self) -> None:
        """The store closes: its memory directory goes if nothing is left in it."""
        if self.memory is not None:
            memory_staging.forget(self.memory)


def staging_names(root: str | None) -> list[str]:
    """The staging names in one directory (none when it is missing), a spare name counting as its file's."""
    if root is None:
        return []
    try:
        return sorted({name.removesuffix(SPARE_SUFFIX) for name in os.listdir(root)})
    except FileNotFoundError:
        return []


SPARE_SUFFIX = ".blob"  # a second name a local blob store gives a staging file for an instant (see local.py)
