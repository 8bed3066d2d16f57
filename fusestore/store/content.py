"""Content references: every refcount change, and when stored bytes are deleted.

A resource (one distinct content) is referenced once by every inode that
points at it and once by every checked upload that reserved it; the
catalog changes a refcount only inside the transaction that adds or drops
the reference. When the last reference goes, the resource's row goes in
the same transaction, with its extents and the chunk uses they held
(``chunks``); a pack left with nothing live is *freed*: listed in ``freed``
(so that recovery deletes it if a crash comes first) and deleted once that
transaction is durable, outside the catalog's writer lock.

Stores written before chunks (format 2) hold whole-file blobs, one per
resource (``LAYOUT_WHOLE_BLOB``), until the upgrade has chunked them; they
are read, and freed, in the same way. For them a stripe lock per digest
orders a writer and a deleter of one blob: a deleter deletes only when the
catalog shows no complete resource of that digest. Writers of one content
hold the same lock while they store its chunks.

Empty content is a resource without bytes (``EmptyReader`` reads it).

Wrong bytes are never served: every ``checked_open`` compares the
content's length with the catalog's; a chunked content's reader hashes each
chunk the first time this process reads it, for files up to
``verify_limit`` bytes (larger ones are left to ``fsck --verify``); a
whole-file blob is hashed whole at its first open under the same limit. A
content copied into a staging file for an in-place edit is checked whatever
its size. Damage is ``BadContent`` (EIO), with a log line naming the file.
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
from ..catalog import COMPLETE, LAYOUT_CHUNKS, LOST, U64, Catalog, Inode, Resource, Txn
from ..digests import EMPTY_DIGEST, hash_ranges
from ..pool import BlobMissing, BlobReader, BlobStore, StagingFile
from ..pool.blobstore import Progress
from .chunk_stream import ChunkStream
from .chunks import Chunks, Finish
from .openinodes import OpenInodes
from .reuse import Reuse
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

    def __init__(self, catalog: Catalog, blobs: BlobStore, chunks: Chunks, opens: OpenInodes,
                 now_ns: Callable[[], int] = time.time_ns, verify_limit: int = DEFAULT_VERIFY_LIMIT,
                 stopping: Stopping | None = None) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.chunks = chunks
        chunks.on_freed = self._free
        self.opens = opens
        self.now_ns = now_ns
        self.verify_limit = verify_limit
        self.stopping = stopping or Stopping()
        self._verified: set[bytes] = set()  # whole-file blobs hashed once in this process (their bytes never change)
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self._deleting: Counter[bytes] = Counter()  # freed keys (``freed``) whose deletion has not finished
        self._deleting_lock = threading.Lock()
        self._undeleted: set[bytes] = set()  # freed keys whose deletion failed (see ``_delete_freed``)
        self.covering_checkpoint = 0  # the number of the checkpoint that will cover packs appended to now

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
        """Mark a resource complete: its extents were stored (by a writer holding its stripe)."""
        resource = tx.resource(digest)
        assert resource is not None, f"no resource {digest.hex()} to complete"
        resource.state = COMPLETE
        tx.save_resource(resource)

    def barrier(self) -> None:
        """Every pack append (and, in an older store, blob put) so far durable."""
        self.chunks.packs.barrier()
        self.blobs.barrier()

    def store(self, digest: bytes, size: int, staged: StagingFile, read: Callable[[int, int], bytes], *,
              streamed: ChunkStream | None = None, reuse: Reuse | None = None, finish: Finish | None = None) -> None:
        """Store the chunks of a staged content the catalog lacks (the caller holds its stripe, then completes it).

        ``read`` reads the content (the staging file, or an edit over it).
        ``streamed``: a finished stream that cut and stored them as they were
        written; only its records are left, and the staging file may become
        a pack (nothing may write it after). ``reuse``, ``finish``: see ``Chunks.store``.
        """
        try:
            if streamed is not None:
                self.chunks.record_streamed(digest, size, streamed, read, self.stopping.check,
                                            lambda pack: self.chunks.packs.adopt(pack, staged), finish)
            else:
                self.chunks.store(digest, size, read, self.stopping.check, reuse, finish)
        except BaseException:
            self.chunks.drop_partial(digest)
            raise

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
        """Drop one reference; the last one releases the content's chunks (or, in an older store, its blob)."""
        gone = tx.remove(digest)
        if gone is None or digest == EMPTY_DIGEST:
            return
        self.drop_bytes(tx, gone)

    def drop_bytes(self, tx: Txn, resource: Resource) -> None:
        """The resource's bytes are no longer its: its chunk uses go, or its whole-file blob is freed."""
        if resource.layout == LAYOUT_CHUNKS:
            self.chunks.release(tx, resource.digest)
        else:
            tx.add_freed(resource.digest)
            self._free(tx, resource.digest)

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

    # -- deleting freed packs and blobs -------------------------------------------------

    def _free(self, tx: Txn, key: bytes) -> None:
        """``key`` (a pack's id or a blob's digest) was listed as freed in ``tx``: delete it once that is durable."""
        self._mark_deleting(key, +1)
        tx.after_abort(lambda: self._mark_deleting(key, -1))
        tx.after_commit(lambda: self._delete_freed(key))

    def _mark_deleting(self, key: bytes, step: int) -> None:
        with self._deleting_lock:
            self._deleting[key] += step
            if self._deleting[key] <= 0:
                del self._deleting[key]

    def deleting(self) -> set[bytes]:
        """Freed keys whose pack or blob may still be there: a checkpoint keeps them listed as freed."""
        with self._deleting_lock:
            return set(self._deleting)

    def _delete_freed(self, key: bytes) -> None:
        """After the commit that freed a pack or blob, once that commit is durable.

        A power loss takes the catalog back to its last anchor, which may
        still name it: the deletion waits for an anchor. Usually it is left
        to the next one (made soon, on another thread: one serves many
        deletions); on a nearly full disk the caller anchors and deletes at
        once, so that the space is back when its unlink returns.
        """
        if self.catalog.disk_nearly_full():
            self.catalog.flush_commits()
            self._delete_now(key)
        else:
            self.catalog.when_durable(lambda: self._delete_now(key))

    def _delete_now(self, key: bytes) -> None:
        try:
            self.delete_unless_referenced(key)
        except Exception:
            # The change that freed it committed, so its caller succeeded: failing it now would tell a
            # lie. The key stays listed as freed (still "deleting" for the checkpoints), each
            # checkpoint tries again (``retry_deletions``), and failing that, the next open's recovery.
            log.exception("could not delete the freed %s; the next checkpoint tries again", describe_key(key))
            with self._deleting_lock:
                self._undeleted.add(key)
            return
        self._mark_deleting(key, -1)

    def retry_deletions(self) -> None:
        """Delete the freed packs and blobs whose deletion failed (a checkpoint calls this before its barrier)."""
        with self._deleting_lock:
            keys, self._undeleted = self._undeleted, set()
        for key in keys:
            self._delete_freed(key)

    def delete_unless_referenced(self, key: bytes) -> bool:
        """Delete a freed pack, or the blob of a digest, unless the catalog holds it; True when it did."""
        if len(key) == U64.size:
            return self.chunks.delete_pack_unless_known(int.from_bytes(key, "big"))
        if key == EMPTY_DIGEST:
            return False
        with self.stripe(key):
            with self.catalog.read() as tx:
                resource = tx.resource(key)
            if resource is not None and resource.complete and resource.layout != LAYOUT_CHUNKS:
                return False
            self.blobs.delete(key)
            return True

    def checked_open(self, ino: int, *, whole: bool = False) -> BlobReader:
        """A reader of the committed content, checked as the module docstring says (``whole``: always hashed)."""
        reader, unverified = self.length_checked_open(ino, whole=whole)
        if unverified is not None:
            self.hash_check(ino, reader, unverified)
        return reader

    def length_checked_open(self, ino: int, *, whole: bool = False) -> tuple[BlobReader, bytes | None]:
        """``checked_open`` but for hashing a whole-file blob: the reader, and the digest still to check.

        The split lets a caller hash off its event loop, and only when needed
        (a chunked content's reader checks each chunk as it reads it).
        """
        with self.catalog.read() as tx:
            node = tx.existing_inode(ino)
            resource = tx.resource(node.content) if node.content is not None else None
        if node.content is None or node.content == EMPTY_DIGEST or not stat.S_ISREG(node.mode):
            return EmptyReader(), None
        digest = node.content
        verify = whole or node.size <= self.verify_limit
        if resource is not None and resource.layout == LAYOUT_CHUNKS:
            if resource.state == LOST:
                raise _lost(ino)
            if resource.length != node.size:
                self._refuse(ino, digest, f"holds {resource.length} bytes, not {node.size}")
            return self.chunks.open(digest, node.size, verify=verify,
                                    on_damage=lambda what: self._refuse(ino, digest, what)), None
        try:
            reader = self.reader(node)
        except BlobMissing:
            self._refuse(ino, digest, "is missing")
        if reader.size != node.size:
            reader.close()
            self._refuse(ino, digest, f"holds {reader.size} bytes, not {node.size}")
        return reader, digest if verify and digest not in self._verified else None

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
        log.error("the content %s of %s %s: reads of the file fail with EIO (fusestore fsck --repair)",
                  digest.hex(), where, what)
        raise errors.BadContent(f"the content of inode {ino} is damaged: it {what}")

    def reader(self, node: Inode) -> BlobReader:
        """A whole-file blob's reader of the node's committed content (BlobMissing when its blob is gone).

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
                raise _lost(node.ino) from None
            raise

    def open_content(self, digest: bytes) -> BlobReader:
        """A reader of a stored content by digest (proof of access, recovery): chunks are hashed as they are read."""
        if digest == EMPTY_DIGEST:
            return EmptyReader()
        with self.catalog.read() as tx:
            resource = tx.resource(digest)
        if resource is None:
            raise BlobMissing(f"no content {digest.hex()}")
        if resource.layout == LAYOUT_CHUNKS:
            return self.chunks.open(digest, resource.length, verify=True, on_damage=_damaged)
        return self.blobs.open(digest)

    def read_ranges(self, digest: bytes, ranges: list[tuple[int, int]]) -> bytes:
        """The BLAKE3 of ranges of a stored content, in order (a proof-of-access answer)."""
        if digest == EMPTY_DIGEST or not ranges:
            return hash_ranges(lambda size, offset: b"", ranges)
        reader = self.open_content(digest)
        try:
            return hash_ranges(reader.pread, ranges)
        finally:
            reader.close()

    def verify(self, digest: bytes, length: int) -> bool:
        """Whether the content's bytes are there, and are exactly the ``length`` bytes that hash to ``digest``."""
        if digest == EMPTY_DIGEST:
            return length == 0
        try:
            reader = self.open_content(digest)
        except FileNotFoundError:
            return False
        try:
            return reader.size == length and reader.hash(self.stopping.check) == (digest, length)
        except (errors.BadContent, FileNotFoundError):
            return False
        finally:
            reader.close()


def _lost(ino: int) -> errors.ContentLost:
    return errors.ContentLost(f"the content of inode {ino} is lost (fsck found its bytes damaged or missing); "
                              "write it again to restore it")


def _damaged(what: str) -> NoReturn:
    raise errors.BadContent(f"a stored content {what}")


def describe_key(key: bytes) -> str:
    """A ``freed`` or ``unsynced`` key for a log line: a pack's id or a blob's digest."""
    return f"pack {int.from_bytes(key, 'big'):016x}" if len(key) == U64.size else f"blob {key.hex()}"
