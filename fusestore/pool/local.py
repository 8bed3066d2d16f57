"""The blob pool: immutable content files named by their BLAKE3 digest.

Layout (fixed: fsck, tests and operators rely on it)::

    <store>/pool/ab/cd/<64 hex>   one file per distinct non-empty content
    <store>/staging/<name>        bytes not yet published (puts, open files); 32 hex digits
    <store>/staging/<name>.blob   for an instant during ``publish``, when a stale blob is in the way

A blob comes to be in one way only: its bytes are written to a staging file,
and the complete file gets the blob's name as a second name (a hard link;
atomic), before the catalog transaction that references it. Where a stale
file holds that name (debris of a crash), a second staging name is renamed
over it instead. So a referenced blob name always holds exactly the bytes it
names, once they are on the disk. Getting them there is ``flush``'s job: one
``syncfs`` makes every blob published so far durable, names and directories
included, and the store calls it at its checkpoints, before it syncs the
catalog (group commit, as a journaling filesystem does; an fsync per blob
would cost two device flushes for every small file). ``verify`` checks a
blob after a crash that may have lost it, and ``published_digest`` finds a
blob whose commit a crash cut off, so that recovery can delete it.
Empty content has no blob file: every reader of it reads nothing.

The pool knows nothing of refcounts; the store decides when a blob is
published or removed. The interface is kept narrow (stage, publish, open,
remove, list) so that an object-storage pool can implement it later.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import blake3

from .. import linux
from ..digests import EMPTY_DIGEST, IO_BUFFER, hash_fd


class Staged:
    """A staging file being filled: its name and an open descriptor."""

    def __init__(self, pool: "LocalPool", name: str, fd: int) -> None:
        self.pool = pool
        self.name = name
        self.fd = fd
        self.path = pool.staging_path(name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class ShortRead(Exception):
    """The reader ended before the announced length."""


class LocalPool:
    """Blobs as files under ``<root>/pool``, staging files under ``<root>/staging``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # Plain strings: paths are built several times per small file, and pathlib costs more than the syscalls.
        self.blob_root = str(self.root / "pool")
        self.staging_root = str(self.root / "staging")
        os.makedirs(self.blob_root, exist_ok=True)
        os.makedirs(self.staging_root, exist_ok=True)

    # -- naming -------------------------------------------------------------

    def blob_path(self, digest: bytes) -> str:
        h = digest.hex()
        return f"{self.blob_root}/{h[:2]}/{h[2:4]}/{h}"

    def staging_path(self, name: str) -> str:
        return f"{self.staging_root}/{name}"

    # -- staging ------------------------------------------------------------

    def create_staging(self) -> Staged:
        """A new, empty staging file with a unique name."""
        while True:
            name = secrets.token_hex(16)
            try:
                fd = os.open(self.staging_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            return Staged(self, name, fd)

    def fill(self, staged: Staged, reader: BinaryIO, length: int) -> tuple[bytes, int]:
        """Copy ``reader`` into a fresh staging file, hashing as it goes: (digest, size).

        ``length == -1`` reads to EOF; otherwise exactly ``length`` bytes are
        taken and a reader that ends early raises ShortRead. Memory use is one
        chunk, whatever the size.
        """
        hasher = blake3.blake3()
        total = 0
        while length < 0 or total < length:
            want = IO_BUFFER if length < 0 else min(IO_BUFFER, length - total)
            chunk = reader.read(want)
            if not chunk:
                if length >= 0:
                    raise ShortRead(f"reader ended after {total} of {length} bytes")
                break
            hasher.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(staged.fd, view):]
            total += len(chunk)
        return hasher.digest(), total

    def reopen_staging(self, name: str) -> Staged | None:
        """A recorded staging file again (recovery), or None when it is gone."""
        try:
            fd = os.open(self.staging_path(name), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        return Staged(self, name, fd)

    def hash_staging(self, staged: Staged) -> tuple[bytes, int]:
        """BLAKE3 and size of a staging file (for files not written in order)."""
        return hash_fd(staged.fd)

    def discard(self, staged: Staged) -> None:
        staged.close()
        self.discard_name(staged.name)

    def discard_name(self, name: str) -> None:
        """Remove a staging file by name, with the spare name ``publish`` may have left."""
        for path in (self.staging_path(name), self.staging_path(name + ".blob")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def start_writeback(self, staged: Staged, offset: int, length: int) -> None:
        """Start writing a range of a staging file to disk, without waiting for it."""
        linux.start_writeback(staged.fd, offset, length)

    def copy_into(self, staged: Staged, digest: bytes, length: int) -> None:
        """Copy the first ``length`` bytes of a blob into a staging file, in the kernel."""
        if length == 0 or digest == EMPTY_DIGEST:
            return
        with open(self.blob_path(digest), "rb") as blob:
            copied = 0
            while copied < length:
                n = os.copy_file_range(blob.fileno(), staged.fd, length - copied, copied, copied)
                if n == 0:
                    raise ShortRead(f"blob {digest.hex()} ended after {copied} of {length} bytes")
                copied += n

    # -- blobs --------------------------------------------------------------

    def publish(self, staged: Staged, digest: bytes) -> None:
        """Give the complete staging file the blob's name ``digest`` (durable at the next ``flush``).

        Replacing an existing blob is harmless: it holds the same bytes, or
        is debris of a crash that nothing references. The staging name stays
        until the caller discards it after its commit.
        """
        if digest == EMPTY_DIGEST:
            return
        target = self.blob_path(digest)
        try:
            try:
                os.link(staged.path, target)
            except FileNotFoundError:  # the blob's directory is new
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.link(staged.path, target)
            return
        except FileExistsError:
            pass
        spare = self.staging_path(staged.name + ".blob")
        try:
            os.link(staged.path, spare)
        except FileExistsError:  # left by an earlier attempt: it names the same file
            pass
        os.rename(spare, target)

    def flush(self) -> None:
        """Make every blob published so far durable, with its name: one syncfs of the pool's filesystem."""
        fd = os.open(self.blob_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            linux.syncfs(fd)
        finally:
            os.close(fd)

    def verify(self, digest: bytes, length: int) -> bool:
        """Whether the blob is there and holds exactly the ``length`` bytes that hash to ``digest``."""
        if digest == EMPTY_DIGEST:
            return length == 0
        try:
            fd = self.open_fd(digest)
        except FileNotFoundError:
            return False
        try:
            return hash_fd(fd) == (digest, length)
        finally:
            os.close(fd)

    def ensure_published(self, staged: Staged, digest: bytes) -> None:
        """Under the catalog's writer lock: put the blob back if a release deleted it since ``publish``.

        Blobs are deleted only under that lock, so what this sees holds until the commit.
        """
        if not self.has(digest):
            self.publish(staged, digest)

    def has(self, digest: bytes) -> bool:
        return digest == EMPTY_DIGEST or os.path.isfile(self.blob_path(digest))

    def open(self, digest: bytes) -> BinaryIO:
        """A seekable reader of the blob (random access with ``os.pread`` on its fileno)."""
        if digest == EMPTY_DIGEST:
            return io.BytesIO(b"")
        return open(self.blob_path(digest), "rb")

    def open_fd(self, digest: bytes) -> int:
        """A read-only descriptor of a non-empty blob, for ``os.pread``.

        Most readers read front to back: the kernel may read ahead further.
        """
        fd = os.open(self.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    def remove(self, digest: bytes) -> None:
        if digest == EMPTY_DIGEST:
            return
        try:
            os.unlink(self.blob_path(digest))
        except FileNotFoundError:
            pass

    def blobs(self) -> Iterator[bytes]:
        """Every blob digest present in the pool (for fsck and tests)."""
        for first in sorted(os.listdir(self.blob_root)):
            for second in sorted(os.listdir(f"{self.blob_root}/{first}")):
                for name in sorted(os.listdir(f"{self.blob_root}/{first}/{second}")):
                    yield bytes.fromhex(name)

    def published_digest(self, name: str) -> bytes | None:
        """The digest of the blob a staging file also is, when ``publish`` ran but no commit followed.

        A crash between the two leaves the blob without a reference; the
        staging file, still linked as the blob, is how recovery finds it.
        """
        path = self.staging_path(name)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return None
        if info.st_nlink < 2:
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            digest, _ = hash_fd(fd)
        finally:
            os.close(fd)
        try:
            blob = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return None
        return digest if (blob.st_dev, blob.st_ino) == (info.st_dev, info.st_ino) else None

    def staging_names(self) -> list[str]:
        return sorted(os.listdir(self.staging_root))

