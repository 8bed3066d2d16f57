"""Checkpoints and recovery: what makes committed changes durable, and what a crash leaves to finish.

A commit waits for no disk (group commit, as a journaling filesystem does).
A *checkpoint* makes everything committed so far durable: one barrier of
the blob store covers every blob stored since the last one, and only then
is the catalog synced, so the catalog never durably names a blob whose
bytes may not be there. The transaction that completes a resource lists its
blob as *unsynced* under the number of the checkpoint that will cover it;
that number moves on under the writer lock before the barrier, so a blob
listed under it was stored before the barrier began, and the checkpoint
forgets exactly those. Freed blobs whose deletion had run before the
barrier are forgotten after it, so that no power loss brings back a blob
that nothing lists.

*Recovery* runs when a store is opened, before anything is served:

- after a power loss (``catalog.anchor``: the catalog opened at its last
  anchored snapshot), only what an fsync covered is trusted: an open file's
  change keeps the bytes its last fsync made durable, or goes, and every
  blob nothing references is deleted (puts and commits the power took);
- blobs listed as unsynced are checked (a power loss may have taken their
  bytes while the catalog's transaction reached the disk); a file that
  points at a lost one becomes empty, with an error in the log;
- staging files of open files are committed: what was written, and
  fsynced, is not lost (one refused by its expected hash goes, with a file
  it created);
- unfinished puts are undone: a put that did not return promised nothing;
  the blob it may have stored is deleted unless something references it;
- inodes unlinked while open are deleted: no handle survives a restart;
- staging files no record names are deleted, and blobs freed just before
  the crash are deleted unless referenced again.
"""

from __future__ import annotations

import logging
import stat

from .. import errors
from ..catalog import LAYOUT_CHUNKS, PENDING, U64, Catalog, Resource, StagingRecord, Synced, Txn
from ..digests import EMPTY_DIGEST
from ..pool import BlobMissing, StagingArea, StagingFile
from .content import Content, describe_key
from .inspect import Inspection
from .writes import Writes

UNSYNCED_ALL = (1 << 64) - 1  # a checkpoint number past every other

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, catalog: Catalog, staging: StagingArea, content: Content, writes: Writes) -> None:
        self.catalog = catalog
        self.staging = staging
        self.content = content
        self.writes = writes

    def checkpoint(self) -> None:
        """Make every committed change durable: blobs first, then the catalog, then retire staging files.

        Freed blobs whose deletion failed are tried again first, so that their deletion is covered too.
        """
        self.content.retry_deletions()
        if self.content.deleting():  # their releases anchored and the blobs gone, so that this barrier covers them
            self.catalog.flush_commits()
        retired = self.writes.retired()  # committed before the catalog sync below, so covered by it
        with self.catalog.write() as tx:
            covering = self.content.covering_checkpoint
            self.content.covering_checkpoint += 1
            changes = self.writes.open_changes()
            deleted = set(tx.freed()) - self.content.deleting()  # their deletions ran: the barrier covers them
            pending = tx.has_unsynced() or bool(deleted)
        if pending:
            self.content.barrier()
            with self.catalog.write() as tx:
                tx.remove_unsynced_up_to(covering)
                tx.forget_freed(deleted - self.content.deleting())
        self.catalog.sync()
        self.writes.synced(changes)
        self.writes.delete_retired(retired)

    # -- recovery -------------------------------------------------------------------

    def recover(self) -> None:
        """Finish or undo what a crash left (see the module docstring), one log line per action."""
        power_lost = self.catalog.power_lost
        if self.catalog.rolled_back is not None:
            found, anchored = self.catalog.rolled_back
            log.warning("recovery: the machine went down with the store open; the catalog went back to its "
                        "last checkpoint (transaction %d; the disk held pages up to transaction %d, not all of "
                        "them durable)", anchored, found)
        elif power_lost:
            log.warning("recovery: the machine went down with the store open; the catalog's last checkpoint "
                        "was its last change")
        self._check_unsynced()
        with self.catalog.read() as tx:
            records = list(tx.staging_records())
            orphans = tx.orphans()
        where = self._paths({record.ino for record in records} | set(orphans)) if records or orphans else {}
        candidates: set[bytes] = set()
        for record in records:
            path = where.get(record.ino, f"inode {record.ino}")
            staged = self.staging.reopen(record.name)
            synced = self._synced(record) if record.keep and power_lost else None
            if record.keep and power_lost and synced is None:  # in memory, or its pages never on the disk
                if staged is not None:
                    staged.close()
                self._drop_never_fsynced(record, path)
                continue
            if record.keep and staged is not None:
                try:
                    self.writes.resume(record, staged)
                except BlobMissing:
                    log.error("recovery: the content an edit of %s started from is gone; the edit is lost, the "
                              "file keeps its committed content (fusestore fsck)", path)
                    staged.close()
                    with self.catalog.write() as tx:
                        self.writes.undo_recorded(tx, record, remove_created=False)
                    continue
                if synced is not None:
                    self._commit_fsynced_part(staged, path, synced)
                else:
                    self._commit_recovered(staged, path, staged.modified_ns())
                continue
            if staged is not None:  # an unfinished put: it may have stored its blob already
                candidates.add(staged.hash()[0])
                staged.close()
                log.info("recovery: undid the unfinished upload to %s", path)
            else:
                log.warning("recovery: the staging file of %s is gone; the file keeps its committed content", path)
            with self.catalog.write() as tx:
                self.writes.undo_recorded(tx, record, remove_created=not record.keep)
        with self.catalog.write() as tx:
            for ino in tx.orphans():
                node = tx.inode(ino)
                if node is None:
                    tx.remove_orphan(ino)
                else:
                    log.info("recovery: deleted %s, unlinked while it was open", where.get(ino, f"inode {ino}"))
                    self.content.delete(tx, node)
            candidates |= set(tx.freed())
            tx.forget_freed(set(tx.freed()))
            candidates |= self._drop_pending(tx)
        if power_lost:
            candidates |= set(self.content.blobs.digests())
        with self.catalog.read() as tx:
            recorded = {record.name for record in tx.staging_records()}
        for name in self.staging.names():
            if name not in recorded:
                self.staging.discard_name(name)
        for key in candidates:
            is_pack = len(key) == U64.size
            if (is_pack or self.content.blobs.contains(key)) and self.content.delete_unless_referenced(key):
                log.info("recovery: deleted %s, which nothing references", describe_key(key))

    def _drop_pending(self, tx: Txn) -> set[bytes]:
        """Resources still pending once every upload is finished or undone: nothing will complete them.

        Their digests become deletion candidates. One that a file names (which
        the write rules never allow) stays, for fsck --repair to settle.
        """
        dropped = set()
        for resource in [res for res in tx.resources() if res.state == PENDING]:
            if next(tx.inodes_with_content(resource.digest), None) is not None:
                log.error("recovery: the pending content %s is named by a file; run fusestore fsck --repair",
                          resource.digest.hex())
                continue
            tx.delete_resource(resource.digest)
            self.content.chunks.release(tx, resource.digest)
            dropped.add(resource.digest)
            log.info("recovery: dropped the content %s (%d bytes), still pending with no upload left to finish it",
                     resource.digest.hex(), resource.length)
        return dropped

    def _paths(self, inodes: set[int]) -> dict[int, str]:
        """The path of each inode from the mount root, for the log (one scan of the directory entries)."""
        with Inspection.over(self.catalog, self.catalog.path.parent) as inspection:
            return {ino: inspection.describe(ino) for ino in inodes}

    def _commit_fsynced_part(self, staged: StagingFile, path: str, synced: Synced) -> None:
        """After a power loss: commit what the change's last fsync made durable."""
        if staged.size() > synced.size:
            log.warning("recovery: kept the %d bytes of %s its last fsync made durable; what was written after "
                        "it is gone with the power", synced.size, path)
        self._commit_recovered(staged, path, synced.mtime_ns, synced.size)

    def _synced(self, record: StagingRecord) -> Synced | None:
        with self.catalog.read() as tx:
            return tx.synced(record.name)

    def _drop_never_fsynced(self, record: StagingRecord, path: str) -> None:
        log.warning("recovery: what was written to %s was never fsynced, and the power took it; the file "
                    "keeps its committed content", path)
        with self.catalog.write() as tx:
            self.writes.undo_recorded(tx, record, remove_created=False)

    def _commit_recovered(self, staged: StagingFile, path: str, mtime_ns: int, size: int | None = None) -> None:
        """Commit the staging file, or its first ``size`` bytes. It is read, never written: the commit that
        crashed may have made it a pack already (``PackStore.adopt``)."""
        digest, size = self.writes.hash(staged, size=size)
        try:
            self.writes.commit(staged, digest, size, mtime_ns=mtime_ns)
        except errors.HashMismatch as exc:
            log.warning("recovery: what was written to %s was not its expected content (%s); discarded", path, exc)
            return
        log.info("recovery: committed what was written to %s before the crash (%d bytes, BLAKE3 %s)",
                 path, size, digest.hex())

    def _check_unsynced(self) -> list[int]:
        """Check the packs (and older stores' blobs) no checkpoint covered; files whose content is lost become empty.

        A chunk whose bytes are gone may still be in a staging file: an fsync
        made the file durable, its commit reached the disk and the pack's
        bytes did not. It is stored again from there. After a crash of the
        process alone every chunk checks out; a barrier then makes them
        durable, and the list starts empty (its checkpoint numbers were the
        crashed process's).
        """
        with self.catalog.read() as tx:
            unsynced = tx.unsynced()
            packs = [int.from_bytes(key, "big") for key in unsynced if len(key) == U64.size]
            damaged_chunks = {chunk.digest for pack in packs for digest in tx.chunks_in_pack(pack)
                              if (chunk := tx.chunk(digest)) is not None and not self.content.chunks.intact(chunk)}
            damaged = [res for digest in unsynced if len(digest) != U64.size
                       if (res := tx.resource(digest)) is not None and not self.content.verify(digest, res.length)]
            if damaged_chunks:
                using = {digest for digest, extent in tx.all_extents() if extent.chunk in damaged_chunks}
                damaged += [res for digest in sorted(using) if (res := tx.resource(digest)) is not None]
            recorded = {record.name for record in tx.staging_records()}
        damaged = [res for res in damaged if not self._restore_from_staging(res, recorded, damaged_chunks)]
        lost: list[int] = []
        if not unsynced:
            return lost
        self.content.barrier()
        with self.catalog.write() as tx:
            tx.remove_unsynced_up_to(UNSYNCED_ALL)
            for resource in damaged:
                lost += self._empty_files_of(tx, resource.digest)
                remaining = tx.resource(resource.digest)
                if remaining is not None:  # reserved by an unfinished upload, which recovery undoes
                    self.content.drop_bytes(tx, remaining)
                    remaining.state = PENDING
                    tx.save_resource(remaining)
        for resource in damaged:
            if resource.layout != LAYOUT_CHUNKS:
                self.content.blobs.delete(resource.digest)
        return lost

    def _restore_from_staging(self, resource: Resource, recorded: set[str], lost_chunks: set[bytes]) -> bool:
        """Store the lost bytes of ``resource`` again from a staging file no record names that holds its content."""
        digest, length = resource.digest, resource.length
        for name in self.staging.names():
            staged = self.staging.reopen(name) if name not in recorded else None
            if staged is None:
                continue
            try:
                if staged.size() != length or staged.hash() != (digest, length):
                    continue
                if resource.layout == LAYOUT_CHUNKS:
                    replaced = self.content.chunks.replace_lost(staged.read, length, lost_chunks)
                    lost_chunks -= replaced
                    if not self.content.verify(digest, length):
                        continue
                else:
                    self.content.blobs.put(staged, digest)
                log.warning("recovery: the bytes of %s were lost in a crash; stored them again from staging file %s",
                            digest.hex(), name)
                return True
            finally:
                staged.close()
        return False

    def _empty_files_of(self, tx: Txn, digest: bytes) -> list[int]:
        lost = [node for node in tx.inodes() if stat.S_ISREG(node.mode) and node.content == digest]
        for node in lost:
            log.error("the content of inode %d (%d bytes, BLAKE3 %s) was lost in a crash before it "
                      "reached the disk; the file is now empty", node.ino, node.size, digest.hex())
            self.content.reference_empty(tx)
            self.content.set_content(tx, node, EMPTY_DIGEST, 0)
        return [node.ino for node in lost]
