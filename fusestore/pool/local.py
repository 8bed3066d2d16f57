"""The blob store of the embedded default: one file per blob under ``<store>/pool``.

Layout: ``pool/ab/cd/<64 hex>``, the digest's first two bytes as directories.
A put gives the complete staging file the blob's name as a second name (a
hard link: atomic, and no byte is copied); where a stale file holds that
name (debris of a crash), a spare second name of the staging file is
renamed over it instead. So a blob name always holds exactly the bytes it
names, once they are on the disk. Getting them there is ``barrier``'s job:
one ``syncfs`` of the pool's filesystem covers every blob put so far, names
and directories included (group commit: a flush per blob would cost two
device flushes for every small file). Where syncfs may flush nothing (FUSE,
network and overlay filesystems: ``linux.syncfs_flushes``), the barrier
fsyncs each blob put since the last one, and the directories that name
them or that a blob was deleted from (so that no deleted blob comes back
after its ``freed`` entry is forgotten), from worker threads so that the
filesystem can batch them.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from .. import linux, private
from ..digests import hash_fd
from .blobstore import BlobMissing, Progress, Promises
from .staging import SPARE_SUFFIX, ShortRead, StagingFile


class LocalBlobReader:
    """A blob file open for reading; most readers read front to back, so the kernel may read ahead further."""

    def __init__(self, path: str, digest: bytes) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise BlobMissing(errno.ENOENT, f"no blob {digest.hex()}") from None
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self.digest = digest
        self.size = os.fstat(self._fd).st_size

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def hash(self, on_read: Progress | None = None) -> tuple[bytes, int]:
        return hash_fd(self._fd, on_read)

    def copy_to(self, target: StagingFile, length: int, on_copied: Progress | None = None) -> None:
        """In the kernel (copy_file_range), extent by extent: no byte passes through Python, no hole is filled."""
        if length > self.size:
            raise ShortRead(f"blob {self.digest.hex()} holds {self.size} bytes, not the {length} to copy")
        for start, extent, is_data in linux.extents(self._fd, 0, length):
            copied = 0
            while is_data and copied < extent:
                want = min(COPY_STEP, extent - copied)
                n = os.copy_file_range(self._fd, target.fileno(), want, start + copied, start + copied)
                if n == 0:
                    raise ShortRead(f"blob {self.digest.hex()} ended after {start + copied} of {length} bytes")
                copied += n
                if on_copied is not None:
                    on_copied(n)
        target.truncate(length)  # the holes, the last one included

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalBlobStore:
    """Blobs as files in one local directory, on the same filesystem as the staging area."""

    promises = Promises(durable_on_put=False, atomic_put=True)

    def __init__(self, root: str | os.PathLike[str], *, trust_syncfs: bool | None = None) -> None:
        """``trust_syncfs``: whether syncfs makes puts durable here (None: judge by the filesystem's type)."""
        self.root = os.fspath(root)
        private.make_dirs(self.root)
        self.trust_syncfs = linux.syncfs_flushes(self.root) if trust_syncfs is None else trust_syncfs
        self._since_barrier: set[str] = set()  # paths put since the last barrier, when syncfs is not trusted
        self._unlinked_in: set[str] = set()  # directories a blob was deleted from since then (likewise)
        self._lock = threading.Lock()

    def path_of(self, digest: bytes) -> str:
        return blob_path(self.root, digest)

    def put(self, staged: StagingFile, digest: bytes) -> None:
        target = self.path_of(digest)
        if not self.trust_syncfs:
            with self._lock:
                self._since_barrier.add(target)
        try:
            try:
                os.link(staged.path, target)
            except FileNotFoundError:  # the blob's directory is new
                private.make_dirs(os.path.dirname(target))
                os.link(staged.path, target)
            return
        except FileExistsError:
            pass
        spare = staged.path + SPARE_SUFFIX
        try:
            os.link(staged.path, spare)
        except FileExistsError:  # left by an earlier attempt: it names the same file
            pass
        os.rename(spare, target)

    def open(self, digest: bytes) -> LocalBlobReader:
        return LocalBlobReader(self.path_of(digest), digest)

    def delete(self, digest: bytes) -> None:
        path = self.path_of(digest)
        if not self.trust_syncfs:  # the barrier must make the deletion durable too (FORMAT.md, W6)
            with self._lock:
                self._unlinked_in.add(os.path.dirname(path))
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def contains(self, digest: bytes) -> bool:
        return os.path.isfile(self.path_of(digest))

    def digests(self) -> Iterator[bytes]:
        for first in sorted(os.listdir(self.root)):
            for second in sorted(os.listdir(f"{self.root}/{first}")):
                for name in sorted(os.listdir(f"{self.root}/{first}/{second}")):
                    yield bytes.fromhex(name)

    def barrier(self) -> None:
        if self.trust_syncfs:
            linux.syncfs_path(self.root)
            return
        with self._lock:
            paths, self._since_barrier = self._since_barrier, set()
            unlinked_in, self._unlinked_in = self._unlinked_in, set()
        directories = {os.path.dirname(path) for path in paths}
        directories |= {os.path.dirname(directory) for directory in directories} | ({self.root} if paths else set())
        directories |= unlinked_in
        try:
            with ThreadPoolExecutor(max_workers=SYNC_THREADS) as pool:
                list(pool.map(_fsync_path, paths))  # the files first, then the names that reach them
                list(pool.map(_fsync_path, directories))
        except BaseException:
            with self._lock:
                self._since_barrier |= paths  # the next barrier tries them again
                self._unlinked_in |= unlinked_in
            raise


SYNC_THREADS = 8
COPY_STEP = 64 << 20  # bytes per copy_file_range: how often a long copy reports, and may be stopped


def blob_path(root: str | os.PathLike[str], digest: bytes) -> str:
    """Where the blob ``digest`` lives under a local pool's ``root``: ``ab/cd/<64 hex>``."""
    h = digest.hex()
    return f"{os.fspath(root)}/{h[:2]}/{h[2:4]}/{h}"


def _fsync_path(path: str) -> None:
    try:
        linux.fsync_path(path)
    except FileNotFoundError:  # deleted since its put: nothing to make durable
        pass
