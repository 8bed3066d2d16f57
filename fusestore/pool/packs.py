"""Pack files: many chunks' stored bytes back to back, under ids the store chooses.

A pack has no header and no framing: the catalog maps each chunk to (pack,
offset, stored length), and a pack is only bytes. Its life: ``create``d
empty, ``append``ed to while open (each append is given the offset it
starts at), ``seal``ed (immutable forever after: an object store would upload
it there), read at any time, and ``delete``d whole once the store has copied
its live chunks elsewhere. Which packs are sealed is the store's record: a
pack store refuses appends to a pack it sealed itself, and continues any
other at its end, such as one that a crashed process was filling.

``LocalPackStore`` keeps packs as files ``<root>/<16 hex digits>``, one flat
directory. Appends from many threads reserve their ranges under one lock
and write outside it (pwrite), so that their writes run side by side; a
write that fails (a full disk) leaves its range as dead bytes that nothing
references, and later appends start after it. Each unsealed pack keeps its
append descriptor until it is sealed or deleted: the store keeps few open. A crash
may leave part of an unfinished append at a pack's end, dead bytes too:
an append is not atomic, only durable once ``barrier`` returns after it,
and the store references no chunk before that (``promises``).

``barrier`` works as ``LocalBlobStore``'s: one ``syncfs`` where the
filesystem's is trusted, otherwise an fsync of each pack appended to or
created since the last barrier, then of the directory if a pack was created
or deleted since (and once of its parent, if this store made the directory);
what a failed barrier did not finish, the next one redoes.
A pack is added to that list once its write has returned, never before: a
barrier that runs during a write must not forget the pack it could not yet
flush.

Reads go through a bounded cache of read descriptors (LRU). A descriptor is
an object that closes its fd when it is garbage: one evicted or dropped by
``delete`` while another thread still preads through it is closed when that
read lets go of it, never under it. Descriptors are opened under the lock
that ``delete`` drops them with (after it unlinks), so no descriptor of a
deleted pack can be cached after its delete returns.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Protocol

from .. import linux, private
from .blobstore import Promises
from .staging import ShortRead, StagingFile

READ_CACHE = 64  # packs kept open for reading
MAX_PACK_ID = (1 << 64) - 1
HEX_DIGITS = frozenset("0123456789abcdef")


class PackMissing(FileNotFoundError):
    """No pack of that id (deleted, never created, or lost in a crash)."""


class PackSealed(Exception):
    """An append to a pack this store has sealed."""


class PackStore(Protocol):
    """What the store needs of wherever packs live; every operation but ``delete`` raises PackMissing for none."""

    promises: Promises

    def create(self, pack: int) -> None:
        """A new, empty pack (FileExistsError if there is one of that id)."""

    def append(self, pack: int, data: bytes | memoryview) -> int:
        """Add ``data`` at the end of an unsealed pack and give the offset it starts at (safe on many threads)."""

    def end(self, pack: int) -> int:
        """Where the next append would start."""

    def seal(self, pack: int) -> None:
        """No more appends to the pack (PackSealed after)."""

    def read(self, pack: int, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes (ShortRead where the pack ends before)."""

    def adopt(self, pack: int, source: StagingFile) -> None:
        """A new pack, sealed, holding the bytes of a staging file that nothing will write again.

        A large file of fresh chunks stored raw lies in its staging file as
        a pack would hold it: this spares writing it twice. OSError when it
        cannot be done (the caller appends the chunks instead).
        """

    def delete(self, pack: int) -> None:
        """Remove the whole pack (none: nothing)."""

    def packs(self) -> Iterator[int]:
        """The ids of the packs present, in order."""

    def barrier(self) -> None:
        """Make every create, append and delete so far durable, names included."""


class _Descriptor:
    """An open file descriptor, closed when the last reference to it goes."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        os.close(self.fd)


class _Appending:
    """An unsealed pack this process appends to: its write descriptor and where the next append starts."""

    __slots__ = ("file", "end")

    def __init__(self, file: _Descriptor, end: int) -> None:
        self.file = file
        self.end = end


class LocalPackStore:
    """Packs as files in one local directory."""

    promises = Promises(durable_on_put=False, atomic_put=False)

    def __init__(self, root: str | os.PathLike[str], *, trust_syncfs: bool | None = None,
                 read_cache: int = READ_CACHE) -> None:
        """``trust_syncfs``: whether syncfs makes appends durable here (None: judge by the filesystem's type)."""
        self.root = os.fspath(root)
        new_root = not os.path.isdir(self.root)
        private.make_dirs(self.root)
        self.trust_syncfs = linux.syncfs_flushes(self.root) if trust_syncfs is None else trust_syncfs
        self._read_cache = read_cache
        self._lock = threading.Lock()
        self._appending: dict[int, _Appending] = {}
        self._sealed: set[int] = set()
        self._readers: OrderedDict[int, _Descriptor] = OrderedDict()
        self._since_barrier: set[int] = set()  # packs written since the last barrier, when syncfs is not trusted
        self._names_changed = False  # a pack was created or deleted since then (likewise)
        self._new_root = new_root and not self.trust_syncfs  # the root's own name is still to flush, once

    def path_of(self, pack: int) -> str:
        if not 0 <= pack <= MAX_PACK_ID:
            raise ValueError(f"pack id {pack} is not a u64")
        return f"{self.root}/{pack:016x}"

    def create(self, pack: int) -> None:
        path = self.path_of(pack)
        with self._lock:
            fd = private.open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            self._appending[pack] = _Appending(_Descriptor(fd), 0)
            self._sealed.discard(pack)
            self._written(pack, named=True)

    def append(self, pack: int, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        with self._lock:
            appending = self._appending.get(pack)
            if appending is None:
                appending = self._appending[pack] = self._continue(pack)
            offset = appending.end
            appending.end += len(view)
        linux.pwrite_all(appending.file.fd, view, offset)
        with self._lock:
            self._written(pack)
        return offset

    def adopt(self, pack: int, source: StagingFile) -> None:
        """A second name for the staging file (one filesystem): its bytes are written once, and stay when it goes."""
        os.link(source.path, self.path_of(pack))
        with self._lock:
            self._sealed.add(pack)
            self._written(pack, named=True)

    def end(self, pack: int) -> int:
        with self._lock:
            appending = self._appending.get(pack)
            if appending is not None:
                return appending.end
        try:
            return os.stat(self.path_of(pack)).st_size
        except FileNotFoundError:
            raise _missing(pack) from None

    def seal(self, pack: int) -> None:
        with self._lock:
            if self._appending.pop(pack, None) is None and not os.path.isfile(self.path_of(pack)):
                raise _missing(pack)
            self._sealed.add(pack)

    def read(self, pack: int, offset: int, length: int) -> bytes:
        file = self._reader(pack)  # held for the whole read: an eviction meanwhile does not close it
        data = os.pread(file.fd, length, offset)
        while len(data) < length:
            more = os.pread(file.fd, length - len(data), offset + len(data))
            if not more:
                raise ShortRead(f"pack {pack:016x} ends before {offset + length} (at {offset + len(data)})")
            data += more
        return data

    def delete(self, pack: int) -> None:
        path = self.path_of(pack)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        with self._lock:  # after the unlink: no descriptor opened before it survives
            self._appending.pop(pack, None)
            self._readers.pop(pack, None)
            self._sealed.discard(pack)
            self._since_barrier.discard(pack)  # only its name is left to flush
            if not self.trust_syncfs:
                self._names_changed = True

    def packs(self) -> Iterator[int]:
        return iter(sorted(int(name, 16) for name in os.listdir(self.root) if is_pack_name(name)))

    def barrier(self) -> None:
        if self.trust_syncfs:
            linux.syncfs_path(self.root)
            return
        with self._lock:
            packs, self._since_barrier = self._since_barrier, set()
            names_changed, self._names_changed = self._names_changed, False
            new_root, self._new_root = self._new_root, False
        try:
            # Sequentially: few packs are open at once, so there are few to flush.
            for pack in sorted(packs):
                try:
                    linux.fsync_path(self.path_of(pack))
                except FileNotFoundError:  # deleted since: nothing to make durable
                    pass
            if names_changed:
                linux.fsync_path(self.root)
            if new_root:  # a store that gains a pack directory (the store fsyncs a new store's own directory)
                linux.fsync_path(os.path.dirname(self.root))
        except BaseException:
            with self._lock:
                self._since_barrier |= packs  # the next barrier tries them again
                self._names_changed |= names_changed
                self._new_root |= new_root
            raise

    def _continue(self, pack: int) -> _Appending:
        """The pack opened for appending at its current end (a pack this process did not create)."""
        if pack in self._sealed:
            raise PackSealed(f"pack {pack:016x} is sealed")
        try:
            fd = private.open_file(self.path_of(pack), os.O_WRONLY)
        except FileNotFoundError:
            raise _missing(pack) from None
        file = _Descriptor(fd)
        return _Appending(file, os.fstat(fd).st_size)

    def _reader(self, pack: int) -> _Descriptor:
        with self._lock:
            file = self._readers.get(pack)
            if file is not None:
                self._readers.move_to_end(pack)
                return file
            try:
                file = _Descriptor(os.open(self.path_of(pack), os.O_RDONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                raise _missing(pack) from None
            os.posix_fadvise(file.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # chunks of a content lie in order: read ahead
            self._readers[pack] = file
            if len(self._readers) > self._read_cache:
                self._readers.popitem(last=False)
            return file

    def _written(self, pack: int, *, named: bool = False) -> None:
        """Note (under the lock) that the pack has bytes (and with ``named`` a new name) the next barrier must flush."""
        if not self.trust_syncfs:
            self._since_barrier.add(pack)
            self._names_changed |= named


def is_pack_name(name: str) -> bool:
    """Whether a file name in a pack directory names a pack: exactly 16 lowercase hex digits."""
    return len(name) == 16 and HEX_DIGITS.issuperset(name)


def _missing(pack: int) -> PackMissing:
    return PackMissing(errno.ENOENT, f"no pack {pack:016x}")
