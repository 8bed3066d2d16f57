"""The one commit path: staged bytes become a file's content.

Every content change (a put by path, the last close of a file written
through the mount, recovery of what a crash left) goes the same way:

1. *Stage*: a staging file is created and recorded in the catalog, in the
   transaction that makes the change's other preparations (a new file's
   inode, a checked upload's reservation). The record names the inode, the
   expected hash if any, and the directory entry the change created, so
   that a crash leaves nothing unaccounted for and a refusal can be undone.
2. *Fill*: the bytes go to the staging file, hashed as they come (no lock).
   An in-place edit's staging file holds only what is written, over the
   content it edits (``edits``); ``read``, ``write``, ``truncate`` and
   ``hash`` here see the staged content either way.
3. *Commit* (``Writes.commit``): a content the catalog holds complete
   already is referenced in one transaction, and nothing is stored.
   Otherwise, under the digest's stripe lock, the staging file's chunks
   that the store lacks are appended to packs and its extents recorded, in
   batches (``chunks``); the transaction of the last batch also takes the
   reference, marks the resource complete, points the inode at it, releases
   the old content and removes the staging record (so a small file's commit
   is one transaction). The staging file goes after the commit.
4. *Refuse or fail*: content that does not hash to the expected hash is
   never stored; on that and on any failure one transaction undoes step 1
   (the record, a reservation, and the entry a new file got: on a failure,
   only a put's), and the extents recorded for nothing are released.

Durability is the checkpoints' job (``checkpoints``): a commit waits for no disk.
"""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import errors
from ..catalog import COMPLETE, Catalog, Inode, StagingRecord, Synced, Txn
from ..digests import EMPTY_DIGEST
from ..pool import StagingArea, StagingFile
from .attributes import Attributes
from .chunk_reader import ChunkReader
from .chunk_stream import ChunkStream
from .content import Content
from .edits import Edit, exact_holes
from .reserved import EXPECT_XATTR
from .reuse import Reuse


@dataclass(frozen=True)
class Dropped:
    """A directory entry a refused change removed: the kernel's cached entry must go too."""

    parent: int
    name: bytes
    ino: int


class Refused(errors.HashMismatch):
    """The content does not hash to the expected hash; ``dropped`` is the new file that went with it."""

    def __init__(self, message: str, dropped: Dropped | None) -> None:
        super().__init__(message)
        self.dropped = dropped


class _NeedsChunks(Exception):
    """The transaction found the content incomplete: its chunks must be stored first."""


class Writes:
    """Staging files of the changes in flight, and their commit."""

    def __init__(self, catalog: Catalog, staging: StagingArea, content: Content,
                 now_ns: Callable[[], int] = time.time_ns, max_file_size: int | None = None) -> None:
        """``max_file_size``: no file grows past it (None: as far as the staging area's filesystem allows)."""
        self.catalog = catalog
        self.max_file_size = max_file_size
        self.staging = staging
        self.content = content
        self.now_ns = now_ns
        self._of_inode: dict[int, str] = {}  # ino -> staging name of an open file's change
        self._synced: set[str] = set()  # staging names whose record a checkpoint made durable
        self._retired: list[str] = []  # their staging files once committed: deleted after the next checkpoint
        self._bases: dict[str, bytes] = {}  # staging name -> the content an in-place edit's copy started from
        self._edits: dict[str, Edit] = {}  # staging name -> an in-place edit over it (``edits``)
        self._exact_holes: bool | None = None  # whether edits can be made without a copy here (probed once)
        self._lock = threading.Lock()

    # -- stage --------------------------------------------------------------------

    def record(self, tx: Txn, staged: StagingFile, node: Inode, *, keep: bool, expected: bytes | None = None,
               created: tuple[int, bytes] | None = None, reserved: bool = False,
               base: tuple[bytes, int] | None = None) -> StagingRecord:
        """Record a staging file for ``node`` inside the caller's transaction.

        ``keep``: an open file's bytes, which recovery commits (an unfinished
        put is undone instead). A pending expected hash set on the inode
        (``expect``) moves into the record. ``base`` = (digest, length): an
        in-place edit's (``edits``), which the record holds a reference to.
        """
        pending = tx.xattr(node.ino, EXPECT_XATTR)
        if pending is not None:
            tx.remove_xattr(node.ino, EXPECT_XATTR)
            expected = expected or bytes(pending)
        record = StagingRecord(staged.name, node.ino, reserved=reserved, expected=expected, keep=keep)
        if base is not None:
            record.base, record.base_length = base
            resource = tx.resource(record.base)
            if resource is None or not resource.complete:
                raise errors.NotFound(f"the content {record.base.hex()} an edit starts from went meanwhile")
            tx.put(record.base, resource.length)
        if created is not None:
            record.parent, record.entry = created
        tx.add_staging(record)
        if keep:  # known before the commit, so that an ``expect`` waiting for the writer lock finds the record
            self._remember(node.ino, staged.name)
            tx.after_abort(lambda: self._forget(node.ino, staged.name))
        return record

    def stage(self, ino: int, copy_length: int) -> StagingFile:
        """A staging file for an open file, starting with the first ``copy_length`` bytes of its content.

        A chunked content is not copied: the staging file is an ``Edit``
        over it. Elsewhere the copy can be long: call this from a worker
        thread unless ``copy_length`` is 0.
        """
        with self.catalog.read() as tx:
            node = tx.existing_inode(ino)
        if not stat.S_ISREG(node.mode):
            raise errors.InvalidArgument(f"inode {ino} is not a regular file")
        copy_length = min(copy_length, node.size)
        staged = self.staging.create(small=copy_length == 0)
        edit = None
        try:
            base = None
            if copy_length:  # an in-place edit: what it starts from is checked whole, whatever the limit
                reader = self.content.checked_open(ino, whole=True)
                if isinstance(reader, ChunkReader) and self._edits_in_place():
                    staged.truncate(copy_length)
                    edit = Edit(staged, reader.digest, reader, copy_length)
                else:
                    try:
                        reader.copy_to(staged, copy_length, self.content.stopping.check)
                    finally:
                        reader.close()
                    base = reader.digest if isinstance(reader, ChunkReader) else None  # what was copied, exactly
            with self.catalog.write() as tx:
                current = tx.inode(ino)
                if current is None:
                    raise errors.NotFound(f"inode {ino} was deleted")
                self.record(tx, staged, current, keep=True,
                            base=(edit.base, edit.base_length) if edit is not None else None)
        except BaseException:
            if edit is not None:
                edit.close()
            self.staging.discard(staged)
            raise
        with self._lock:
            if base is not None:
                self._bases[staged.name] = base
            if edit is not None:
                self._edits[staged.name] = edit
        return staged

    def _edits_in_place(self) -> bool:
        if self._exact_holes is None:
            self._exact_holes = exact_holes(self.staging)
        return self._exact_holes

    def resume(self, record: StagingRecord, staged: StagingFile) -> None:
        """Recovery: a staging file left by a crash reads as its record says (an edit over its base)."""
        if record.base is not None:
            edit = Edit(staged, record.base, self.content.open_content(record.base), record.base_length)
            with self._lock:
                self._edits[staged.name] = edit

    # -- the staged bytes, as the file reads them ------------------------------------------------------

    def _edit_of(self, staged: StagingFile) -> Edit | None:
        with self._lock:
            return self._edits.get(staged.name)

    def read(self, staged: StagingFile, size: int, offset: int) -> bytes:
        edit = self._edit_of(staged)
        return edit.read(size, offset) if edit is not None else staged.read(size, offset)

    def write(self, staged: StagingFile, data: bytes, offset: int) -> int:
        edit = self._edit_of(staged)
        return edit.write(data, offset) if edit is not None else staged.write(data, offset)

    def truncate(self, staged: StagingFile, size: int) -> None:
        """Truncate; an edit's lowered base length is recorded (recovery must not read the base past it)."""
        edit = self._edit_of(staged)
        if edit is None:
            staged.truncate(size)
            return
        if edit.truncate(size):
            with self.catalog.write() as tx:
                record = tx.staging_record(staged.name)
                if record is not None:
                    record.base_length = edit.base_length
                    tx.add_staging(record)

    def hash(self, staged: StagingFile, on_read: Callable[[int], object] | None = None,
             size: int | None = None) -> tuple[bytes, int]:
        """BLAKE3 and size of the staged content (or of its first ``size`` bytes)."""
        edit = self._edit_of(staged)
        return edit.hash(on_read, size) if edit is not None else staged.hash(on_read, size)

    def writable(self, offset: int, length: int) -> int:
        """How many of ``length`` bytes may be written at ``offset``: all, or those below the size limit.

        As ext4 at its own maximum: a write that crosses the limit is short,
        one that starts at or past it fails with FileTooLarge (EFBIG).
        """
        if self.max_file_size is None or offset + length <= self.max_file_size:
            return length
        if offset >= self.max_file_size:
            raise errors.FileTooLarge(f"a file may not grow past {self.max_file_size} bytes")
        return self.max_file_size - offset

    def check_size(self, size: int) -> None:
        """A truncation to ``size``, or an upload of that length: FileTooLarge past the size limit."""
        if self.max_file_size is not None and size > self.max_file_size:
            raise errors.FileTooLarge(f"a file may not grow past {self.max_file_size} bytes")

    def _remember(self, ino: int, name: str) -> None:
        with self._lock:
            self._of_inode[ino] = name

    def _forget(self, ino: int, name: str) -> None:
        with self._lock:
            if self._of_inode.get(ino) == name:
                del self._of_inode[ino]
            self._synced.discard(name)
            self._bases.pop(name, None)
            edit = self._edits.pop(name, None)
        if edit is not None:
            edit.close()

    def is_staged(self, ino: int) -> bool:
        """Whether an open file's change of ``ino`` is in flight (its committed hash is then not its content)."""
        with self._lock:
            return ino in self._of_inode

    # -- fsync --------------------------------------------------------------------------

    def sync_staged(self, staged: StagingFile) -> None:
        """An fsync of an open file's change: its bytes durable, and how many in its record.

        After a power loss, a page written later may or may not be on the
        disk, and one no fsync covered may read as zeros: recovery then keeps
        the first ``synced.size`` bytes, which were all durable (``checkpoints``),
        and nothing of a change no fsync covered. What it keeps reaches the
        disk with the checkpoint the caller runs next.
        """
        size, mtime_ns = staged.size(), staged.modified_ns()
        staged.sync()
        with self.catalog.write() as tx:
            if tx.staging_record(staged.name) is not None:  # else committed or undone meanwhile
                tx.set_synced(staged.name, Synced(size, mtime_ns))

    # -- the expected hash ------------------------------------------------------------

    def expect(self, ino: int, digest: bytes | None) -> None:
        """The next commit of ``ino`` must hash to ``digest`` (None: no longer)."""
        with self._lock:
            name = self._of_inode.get(ino)
        with self.catalog.write() as tx:
            record = tx.staging_record(name) if name is not None else None
            if record is not None:
                if digest is None and record.expected is None:
                    raise errors.NoAttribute("no expected hash is set")
                record.expected = digest
                tx.add_staging(record)
            elif digest is not None:
                tx.set_xattr(ino, EXPECT_XATTR, digest)
            elif not tx.remove_xattr(ino, EXPECT_XATTR):
                raise errors.NoAttribute("no expected hash is set")

    def expected(self, ino: int) -> bytes | None:
        with self._lock:
            name = self._of_inode.get(ino)
        with self.catalog.read() as tx:
            record = tx.staging_record(name) if name is not None else None
            if record is not None:
                return record.expected
            pending = tx.xattr(ino, EXPECT_XATTR)
            return bytes(pending) if pending is not None else None

    # -- commit -----------------------------------------------------------------------

    def stream(self) -> ChunkStream:
        """A store of an open file's bytes as they are written in order (``ChunkStream``; the caller closes it)."""
        return ChunkStream(self.content.chunks, self.staging.create)

    def commit(self, staged: StagingFile, digest: bytes, size: int, *, mtime_ns: int | None = None,
               remove_created: bool = True, streamed: ChunkStream | None = None,
               unchanged: int = 0) -> Attributes | None:
        """Make the staged bytes the content of their inode (see the module docstring).

        Returns the inode's new attributes, or None when the inode was
        unlinked meanwhile and nobody can ever read these bytes. ``mtime_ns``
        keeps a time a tool set after its last write (tar, cp -a, rsync); None
        means now. ``streamed``: a finished stream of exactly these bytes.
        ``unchanged``: nothing was written below this offset since ``stage``
        copied the content (its chunks there are taken as they are).
        Raises ``Refused`` for content that is not the expected.
        """
        with self.catalog.read() as tx:
            record = tx.staging_record(staged.name)
            resource = tx.resource(digest)
            node = tx.inode(record.ino) if record is not None else None
        if record is None:
            raise errors.NotFound(f"staging file {staged.name} has no record")
        if node is None or node.nlink <= 0:  # unlinked meanwhile: store nothing
            self.abandon(staged, remove_created=False)
            return None
        if record.expected is not None and digest != record.expected:
            dropped = self.abandon(staged, remove_created=remove_created)
            raise Refused(f"content hashes to {digest.hex()}, expected {record.expected.hex()}", dropped)
        committed: tuple[Attributes | None, Txn] | None = None
        try:
            if digest == EMPTY_DIGEST or (resource is not None and resource.complete):
                try:
                    committed = self._commit_once(record, staged, digest, size, mtime_ns, stored=False)
                except _NeedsChunks:  # its last reference went meanwhile
                    pass
            if committed is None:
                committed = self._store_and_commit(record, staged, digest, size, mtime_ns, streamed,
                                                   self._reuse(staged, size, unchanged))
        except BaseException:
            # A store that fails promised nothing, and the file it made goes; a file made through
            # the mount stays, with its last content, as on any filesystem whose close() fails.
            self.abandon(staged, remove_created=remove_created and not record.keep)
            raise
        result, tx = committed
        tx.run_callbacks(tx.callbacks)  # outside the stripe lock: they may delete a pack
        return result

    def _reuse(self, staged: StagingFile, size: int, unchanged: int) -> Reuse | None:
        """What storing the staged content may take from the content it edits, if any."""
        edit = self._edit_of(staged)
        if edit is not None:
            return edit.reuse()
        with self._lock:
            base = self._bases.get(staged.name)
        return Reuse(base, unchanged, size, size) if base is not None and unchanged > 0 else None

    def _store_and_commit(self, record: StagingRecord, staged: StagingFile, digest: bytes, size: int,
                          mtime_ns: int | None, streamed: ChunkStream | None,
                          reuse: Reuse | None) -> tuple[Attributes | None, Txn]:
        """Store the chunks the catalog lacks, then commit; what was stored for nothing is dropped."""
        with self.content.stripe(digest):
            with self.catalog.read() as tx:
                resource = tx.resource(digest)
            if resource is not None and resource.complete:  # another writer stored it while this one waited
                try:
                    return self._commit_once(record, staged, digest, size, mtime_ns, stored=False)
                except _NeedsChunks:
                    pass
            committed: list[tuple[Attributes | None, Txn]] = []

            def commit_in(tx: Txn) -> None:  # in the transaction of the last batch (once it holds)
                committed[:] = [(self._commit_in(tx, record, staged, digest, size, mtime_ns, stored=True), tx)]

            self.content.store(digest, size, staged, lambda length, offset: self.read(staged, length, offset),
                               streamed=streamed, reuse=reuse, finish=commit_in)
            assert committed, "the store recorded its last batch without the commit"
            if committed[0][0] is None:  # unlinked meanwhile: what was just stored is nobody's
                self.content.chunks.drop_partial(digest)
        return committed[0]

    def _commit_once(self, record: StagingRecord, staged: StagingFile, digest: bytes, size: int,
                     mtime_ns: int | None, *, stored: bool) -> tuple[Attributes | None, Txn]:
        with self.catalog.write(defer_callbacks=True) as tx:
            return self._commit_in(tx, record, staged, digest, size, mtime_ns, stored=stored), tx

    def _commit_in(self, tx: Txn, record: StagingRecord, staged: StagingFile, digest: bytes, size: int,
                   mtime_ns: int | None, *, stored: bool) -> Attributes | None:
        node = tx.inode(record.ino)
        if node is None or node.nlink <= 0:  # unlinked while open: the bytes have nowhere to go
            self._undo(tx, record, staged, remove_created=False)
            return None
        self._reference(tx, record, digest, size, stored=stored)
        tx.remove_staging(record.name)
        tx.after_commit(lambda: self._retire_or_discard(record, staged))
        self.content.set_content(tx, node, digest, size, mtime_ns)
        if record.base is not None:
            self.content.release(tx, record.base)
        return Attributes.of(node)

    def _reference(self, tx: Txn, record: StagingRecord, digest: bytes, size: int, *, stored: bool) -> None:
        """One reference to ``digest`` (a reservation holds it already); complete it if its chunks were stored."""
        if record.reserved and record.expected == digest:
            resource = tx.resource(digest)
            assert resource is not None, "a reservation lost its resource"
        else:
            resource = tx.put(digest, size)
        if resource.complete:
            return
        if digest == EMPTY_DIGEST:  # complete without a blob
            resource.state = COMPLETE
            tx.save_resource(resource)
            return
        if not stored:
            raise _NeedsChunks()
        self.content.complete(tx, digest)

    # -- undo ---------------------------------------------------------------------------

    def abandon(self, staged: StagingFile, *, remove_created: bool = True) -> Dropped | None:
        """Undo a change that will not commit: the record, a reservation, a file it created, the staging file."""
        with self.catalog.write() as tx:
            record = tx.staging_record(staged.name)
            if record is None:  # committed or undone already
                tx.after_commit(lambda: self.staging.discard(staged))
                return None
            return self._undo(tx, record, staged, remove_created=remove_created)

    def _undo(self, tx: Txn, record: StagingRecord, staged: StagingFile | None, *,
              remove_created: bool) -> Dropped | None:
        tx.remove_staging(record.name)
        tx.after_commit(lambda: self._discard(record, staged))
        if record.reserved and record.expected is not None:
            self.content.release(tx, record.expected)
        if record.base is not None and tx.resource(record.base) is not None:  # gone only in a damaged store
            self.content.release(tx, record.base)
        node = tx.inode(record.ino)
        if not (remove_created and record.parent and node is not None
                and (node.content is None or record.keep)
                and tx.lookup(record.parent, record.entry) == record.ino):
            return None
        parent = tx.inode(record.parent)
        assert parent is not None, "an entry without its directory"
        now = self.now_ns()
        tx.remove_entry(parent.ino, record.entry)
        parent.mtime_ns = parent.ctime_ns = now
        tx.save_inode(parent)
        self.content.drop_link(tx, node, now)
        return Dropped(parent.ino, record.entry, node.ino)

    def _retire_or_discard(self, record: StagingRecord, staged: StagingFile) -> None:
        """A committed change's staging file goes, unless a checkpoint made its record durable.

        Then an fsync may have made it and its record durable, and if it went
        at once, a power loss before the next checkpoint would leave the
        record without its bytes: it stays until that checkpoint (and
        recovery may store lost chunks again from it).
        """
        with self._lock:
            synced = record.name in self._synced
            self._synced.discard(record.name)
            if synced:
                self._retired.append(record.name)
        if synced:
            self._forget(record.ino, record.name)
            staged.close()
        else:
            self._discard(record, staged)

    def open_changes(self) -> set[str]:
        """The staging names of open files' changes: under the writer lock, exactly the committed records."""
        with self._lock:
            return set(self._of_inode.values())

    def synced(self, names: set[str]) -> None:
        """A checkpoint made these records durable (see ``_retire_or_discard``)."""
        with self._lock:
            self._synced |= names & set(self._of_inode.values())

    def retired(self) -> list[str]:
        """The staging names a checkpoint that starts now may delete once the catalog is synced."""
        with self._lock:
            return list(self._retired)

    def delete_retired(self, names: list[str]) -> None:
        with self._lock:
            gone = set(names)
            self._retired = [name for name in self._retired if name not in gone]
        for name in names:
            self.staging.discard_name(name)

    def _discard(self, record: StagingRecord, staged: StagingFile | None) -> None:
        self._forget(record.ino, record.name)
        if staged is not None:
            self.staging.discard(staged)
        else:
            self.staging.discard_name(record.name)

    def undo_recorded(self, tx: Txn, record: StagingRecord, *, remove_created: bool) -> None:
        """Recovery: undo a change whose process is gone."""
        self._undo(tx, record, None, remove_created=remove_created)

