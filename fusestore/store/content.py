"""Content references: every refcount change, and when a blob is stored or deleted.

A resource (one distinct content) is referenced once by every inode that
points at it and once by every checked upload that reserved it; the
catalog changes a refcount only inside the transaction that adds or drops
the reference. When the last reference goes, the resource's row goes in
the same transaction and its digest is listed as *freed* (so that recovery
deletes the blob if a crash comes first); the blob itself is deleted right
after the commit, outside the catalog's writer lock.

Publishing and deleting one digest can race: a writer stores a blob the
catalog does not reference yet while the last reference to the same content
goes. Both sides take the digest's stripe lock, and the catalog decides: a
writer holds it from storing the blob until its transaction has made the
resource complete, and a deleter, holding it, deletes only when the catalog
shows no complete resource of that digest. So a blob is never deleted under
a committed reference, and no file system check decides anything.

Empty content is a resource without a blob (``EmptyReader`` reads it).

Wrong bytes are never served: every ``checked_open`` compares the blob's
length with the catalog's, and the first one of each blob in this process
also hashes it, for blobs up to ``verify_limit`` bytes (larger ones are
left to ``fsck --verify``); a blob copied into a staging file for an
in-place edit is hashed whatever its size. A blob that fails is
``BadContent`` (EIO), with a log line naming the file.
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import NoReturn

from .. import errors
from ..catalog import COMPLETE, LOST, Catalog, Inode, Txn
from ..digests import EMPTY_DIGEST, hash_ranges
from ..pool import BlobMissing, BlobReader, BlobStore, StagingFile
from ..pool.blobstore import Progress
from .openinodes import OpenInodes
from .stopping import Stopping

STRIPES = 64
DEFAULT_VERIFY_LIMIT = 256 << 20

log = logging.getLogger(__name__)


class EmptyReader:
    """The reader of empty content, which has no blob."""

    size = 0

    def pread(self, length: int, offset: int) -> bytes:
        return b""

    def hash(self, on_read: Progress | None = None) -> tuple[bytes, int]:
        return EMPTY_DIGEST, 0

    def copy_to(self, target: StagingFile, length: int, on_copied: Progress | None = None) -> None:
        pass

    def close(self) -> None:
        pass


class Content:
    """References to contents over one catalog and blob store."""

    def __init__(self, catalog: Catalog, blobs: BlobStore, opens: OpenInodes,
                 now_ns: Callable[[], int] = time.time_ns, verify_limit: int = DEFAULT_VERIFY_LIMIT,
                 stopping: Stopping | None = None) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.opens = opens
        self.now_ns = now_ns
        self.verify_limit = verify_limit
        self.stopping = stopping or Stopping()
        self._verified: set[bytes] = set()  # blobs hashed once in this process (their bytes never change)
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._deleting: Counter[bytes] = Counter()  # freed digests whose blob deletion has not finished
        self._deleting_lock = threading.Lock()
        self._undeleted: set[bytes] = set()  # freed blobs whose deletion failed (see ``_delete_blob``)
        self.covering_checkpoint = 0  # the number of the checkpoint that will cover blobs published now

    def stripe(self, digest: bytes) -> threading.Lock:
        """The lock a writer and a deleter of ``digest`` both hold (see the module docstring)."""
        return self._stripes[digest[0] % STRIPES]

    # -- references (inside a caller's transaction) ------------------------------

    @staticmethod
    def reference_empty(tx: Txn) -> None:
        """One more reference to the empty content, which is complete without any blob."""
        resource = tx.put(EMPTY_DIGEST, 0)
        if not resource.complete:
            resource.state = COMPLETE
            tx.save_resource(resource)

    def complete(self, tx: Txn, digest: bytes) -> None:
        """Mark a resource complete: its blob was stored (by a writer holding its stripe)."""
        resource = tx.resource(digest)
        assert resource is not None, f"no resource {digest.hex()} to complete"
        resource.state = COMPLETE
        tx.save_resource(resource)
        if not self.blobs.promises.durable_on_put:
            tx.add_unsynced(digest, self.covering_checkpoint)

    def set_content(self, tx: Txn, node: Inode, digest: bytes, length: int, mtime_ns: int | None = None) -> None:
        """Point ``node`` at ``digest`` (already referenced) and release its old content."""
        old = node.content
        now = self.now_ns()
        node.content = digest
        node.size = length
        node.mtime_ns = now if mtime_ns is None else mtime_ns
        node.ctime_ns = now
        tx.save_inode(node)
        if old is not None:
            self.release(tx, old)

    def release(self, tx: Txn, digest: bytes) -> None:
        """Drop one reference; when it was the last, the blob is deleted once the transaction commits."""
        if not tx.remove(digest) or digest == EMPTY_DIGEST:
            return
        tx.add_freed(digest)
        self._mark_deleting(digest, +1)
        tx.after_abort(lambda: self._mark_deleting(digest, -1))
        tx.after_commit(lambda: self._delete_blob(digest))

    def drop_link(self, tx: Txn, node: Inode, now: int) -> None:
        """One name of ``node`` went: delete it with its last name, unless it is still open."""
        node.nlink -= 1
        node.ctime_ns = now
        if node.nlink > 0 or self.opens.is_open(node.ino):
            if node.nlink <= 0:
                tx.add_orphan(node.ino)
                self.opens.orphaned(node.ino)
            tx.save_inode(node)
            return
        self.delete(tx, node)

    def delete(self, tx: Txn, node: Inode) -> None:
        tx.delete_inode(node.ino)
        tx.remove_orphan(node.ino)
        if node.content is not None:
            self.release(tx, node.content)

    def closed(self, ino: int) -> None:
        """The last close of an unlinked inode deletes it."""
        if not self.opens.closed(ino):
            return
        with self.catalog.write() as tx:
            node = tx.inode(ino)
            if node is not None and node.nlink <= 0 and not self.opens.is_open(ino):
                self.delete(tx, node)

    # -- blobs ------------------------------------------------------------------------

    def _mark_deleting(self, digest: bytes, step: int) -> None:
        with self._deleting_lock:
            self._deleting[digest] += step
            if self._deleting[digest] <= 0:
                del self._deleting[digest]

    def deleting(self) -> set[bytes]:
        """Freed digests whose blob may still be there: a checkpoint keeps them listed as freed."""
        with self._deleting_lock:
            return set(self._deleting)

    def _delete_blob(self, digest: bytes) -> None:
        """After the commit that released the blob's last reference, once that commit is durable.

        A power loss takes the catalog back to its last anchor, which may
        still name the blob: the deletion waits for an anchor. Usually it is
        left to the next one (made soon, on another thread: one serves many
        deletions); on a nearly full disk the caller anchors and deletes at
        once, so that the space is back when its unlink returns.
        """
        if self.catalog.disk_nearly_full():
            self.catalog.flush_commits()
            self._delete_now(digest)
        else:
            self.catalog.when_durable(lambda: self._delete_now(digest))

    def _delete_now(self, digest: bytes) -> None:
        try:
            self.delete_unless_referenced(digest)
        except Exception:
            # The change that freed it committed, so its caller succeeded: failing it now would tell a
            # lie. The digest stays listed as freed (still "deleting" for the checkpoints), each
            # checkpoint tries again (``retry_deletions``), and failing that, the next open's recovery.
            log.exception("could not delete the blob %s; the next checkpoint tries again", digest.hex())
            with self._deleting_lock:
                self._undeleted.add(digest)
            return
        self._mark_deleting(digest, -1)

    def retry_deletions(self) -> None:
        """Delete the freed blobs whose deletion failed (a checkpoint calls this before its barrier)."""
        with self._deleting_lock:
            digests, self._undeleted = self._undeleted, set()
        for digest in digests:
            self._delete_blob(digest)

    def delete_unless_referenced(self, digest: bytes) -> bool:
        """Delete the blob of ``digest`` unless the catalog holds it as complete content; True when it did."""
        if digest == EMPTY_DIGEST:
            return False
        with self.stripe(digest):
            with self.catalog.read() as tx:
                resource = tx.resource(digest)
            if resource is not None and resource.complete:
                return False
            self.blobs.delete(digest)
            return True

    def checked_open(self, ino: int, *, whole: bool = False) -> BlobReader:
        """A reader of the committed content, checked as the module docstring says (``whole``: always hashed)."""
        reader, unverified = self.length_checked_open(ino, whole=whole)
        if unverified is not None:
            self.hash_check(ino, reader, unverified)
        return reader

    def length_checked_open(self, ino: int, *, whole: bool = False) -> tuple[BlobReader, bytes | None]:
        """``checked_open`` but for the hashing: the reader, and the digest still to check with ``hash_check``.

        The split lets a caller hash off its event loop, and only when needed.
        """
        with self.catalog.read() as tx:
            node = tx.existing_inode(ino)
        if node.content is None or node.content == EMPTY_DIGEST or not stat.S_ISREG(node.mode):
            return EmptyReader(), None
        digest = node.content
        try:
            reader = self.reader(node)
        except BlobMissing:
            self._refuse(ino, digest, "is missing")
        if reader.size != node.size:
            reader.close()
            self._refuse(ino, digest, f"holds {reader.size} bytes, not {node.size}")
        hash_it = digest not in self._verified and (whole or node.size <= self.verify_limit)
        return reader, digest if hash_it else None

    def hash_check(self, ino: int, reader: BlobReader, digest: bytes) -> None:
        """The blob hashes to its name (remembered for the life of the process), or BadContent; closes it then."""
        try:
            hashed = reader.hash(self.stopping.check)[0]
        except BaseException:
            reader.close()
            raise
        if hashed != digest:
            reader.close()
            self._refuse(ino, digest, "does not hash to its name")
        self._verified.add(digest)

    def _refuse(self, ino: int, digest: bytes, what: str) -> NoReturn:
        from .inspect import Inspection  # only on this rare path: it walks the directory entries

        with Inspection.over(self.catalog, self.catalog.path.parent) as inspection:
            where = inspection.describe(ino)
        log.error("the blob %s of %s %s: reads of the file fail with EIO (fusestore fsck --repair)",
                  digest.hex(), where, what)
        raise errors.BadContent(f"the content of inode {ino} is damaged: its blob {what}")

    def reader(self, node: Inode) -> BlobReader:
        """A reader of the node's committed content (BlobMissing when its blob is gone).

        ContentLost (EIO) when fsck took the blob away: asked only when the
        blob is missing, so reading costs no catalog lookup.
        """
        if node.content is None or node.content == EMPTY_DIGEST or not stat.S_ISREG(node.mode):
            return EmptyReader()
        try:
            return self.blobs.open(node.content)
        except BlobMissing:
            with self.catalog.read() as tx:
                resource = tx.resource(node.content)
            if resource is not None and resource.state == LOST:
                raise errors.ContentLost(f"the content of inode {node.ino} is lost (fsck found its blob "
                                         "damaged or missing); write it again to restore it") from None
            raise

    def read_ranges(self, digest: bytes, ranges: list[tuple[int, int]]) -> bytes:
        """The BLAKE3 of ranges of a stored content, in order (a proof-of-access answer)."""
        if digest == EMPTY_DIGEST or not ranges:
            return hash_ranges(lambda size, offset: b"", ranges)
        reader = self.blobs.open(digest)
        try:
            return hash_ranges(reader.pread, ranges)
        finally:
            reader.close()

    def verify(self, digest: bytes, length: int) -> bool:
        """Whether the blob is there and holds exactly the ``length`` bytes that hash to ``digest``."""
        if digest == EMPTY_DIGEST:
            return length == 0
        try:
            reader = self.blobs.open(digest)
        except FileNotFoundError:
            return False
        try:
            return reader.size == length and reader.hash(self.stopping.check) == (digest, length)
        finally:
            reader.close()

