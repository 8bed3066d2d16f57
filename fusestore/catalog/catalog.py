"""The catalog: every piece of metadata, in one LMDB environment.

One write transaction is one consistent change. Nothing here knows about
paths, namespaces or FUSE: the catalog stores records and keeps their
encodings; the store decides what a change means.

The named databases, their keys and values, byte by byte, are in
``docs/FORMAT.md``; ``records`` encodes them.

A commit waits for no disk (``sync=False``): it survives a crash of the
process, and a checkpoint makes everything committed so far durable by
*anchoring* the catalog (``anchor``), which also makes a power loss take
the catalog back to the last anchored snapshot instead of leaving a torn
tree. (Committing with ``sync=True, metasync=False``, the mode in which
LMDB itself promises integrity, cost an fdatasync per commit: about 3,800
commits/s here, where ``sync=False`` makes 110,000.)
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast, overload

import lmdb

from .. import errors, linux, private
from .anchor import Anchor, AnchorFile, meta_txnids, restore
from .records import (
    COMPLETE,
    LOST,
    READABLE_FORMATS,
    ROOT_INO,
    U64,
    Inode,
    Resource,
    StagingRecord,
    Synced,
    u64,
)

DATABASES = (b"meta", b"resources", b"inodes", b"dirents", b"xattrs", b"staging", b"synced", b"orphans", b"unsynced",
             b"freed")
MAP_SIZE = 1 << 40  # address space only: the file grows with its content
NEARLY_FULL = 16 << 20  # free bytes below which a failed commit is taken for a full disk
RESERVE_MAX = 64 << 20  # disk space kept allocated past the catalog's end: 1% of the disk, up to this
RESERVE_MIN = 1 << 20
ANCHOR_EVERY = 256  # commits after which an anchor runs in the background (see ``Catalog.anchor``)
ANCHOR_BEHIND = 4 * ANCHOR_EVERY  # commits after which a writer waits for one: the thread fell behind

log = logging.getLogger(__name__)


class Catalog:
    """The LMDB environment and its named databases.

    ``readonly=True`` is for inspections (fsck, stats): the directory is never
    created, no disk space is reserved and nothing is written, not even
    LMDB's lock file unless ``reader_lock`` asks for it. Without the lock
    file LMDB does no locking, so the caller must make sure no writer runs
    (``InspectionLock``); with ``reader_lock=True`` this reader takes a slot
    in ``lock.mdb`` (which needs write access to that file), so that a live
    writer keeps the pages of this reader's snapshot. A catalog that a power
    loss left to be taken back to its anchor (``rollback_due``) opens only
    for writing: NeedsRecovery.

    ``rolled_back`` is (the newest transaction found, the anchored one) when
    this open took the catalog back; ``power_lost`` says that the machine
    went down under the last process that had it open, whether or not
    anything had to be taken back (recovery then trusts only what an fsync
    covered). Until the store says ``recovered``, anchors keep naming the
    boot that went down, and no close counts: a crash or a close before
    recovery has run leaves the next open to do it.
    """

    def __init__(
        self, path: Path, *, map_size: int = MAP_SIZE, readonly: bool = False, reader_lock: bool = False
    ) -> None:
        self.path = path = Path(path)
        self.readonly = readonly
        self.rolled_back: tuple[int, int] | None = None
        self._pin: lmdb.Transaction | None = None  # a read transaction on the anchored snapshot
        self._anchor_lock = threading.Lock()
        self._anchored_txnid = -1
        if readonly:
            due = rollback_due(path)
            if due is not None:
                raise errors.NeedsRecovery(
                    f"catalog at {path} was open when the machine went down: recovery must take it back to "
                    f"its last checkpoint (transaction {due[1]}; the disk holds {due[0]}); mount the store "
                    "or run fusestore fsck --repair first"
                )
            self.power_lost = _went_down_under(AnchorFile(path / "anchor", readonly=True).last())
            self.env = _open_readonly(path, map_size, reader_lock)
        else:
            private.make_dirs(path)
            last = AnchorFile(path / "anchor", readonly=True).last()  # only this format writes one
            self.power_lost = _went_down_under(last)
            self._boot = linux.boot_id()  # what this process's anchors name; see ``recovered``
            if last is not None and self.power_lost:
                self._boot = last.boot
                if (path / "data.mdb").exists():
                    self.rolled_back = restore(path / "data.mdb", last)
            self.env = lmdb.open(
                str(path), map_size=map_size, max_dbs=16, max_readers=1024,
                sync=False, readahead=False, lock=True, mode=private.FILE_MODE,
            )
            self._refuse_a_foreign_format()
            self.env.reader_check()  # drop reader slots of dead processes
            self._anchors = AnchorFile(path / "anchor")
        self._write_lock = threading.Lock()
        self.meta = self._open_db(b"meta")
        self.resources = self._open_db(b"resources")
        self.inodes = self._open_db(b"inodes")
        self.dirents = self._open_db(b"dirents")
        self.xattrs = self._open_db(b"xattrs")
        self.staging = self._open_db(b"staging")
        self.synced = self._open_db(b"synced", optional=readonly)  # a format 1 store has none until upgraded
        self.orphans = self._open_db(b"orphans")
        self.unsynced = self._open_db(b"unsynced")
        self.freed = self._open_db(b"freed")
        self._can_reserve = not readonly
        self.reserve_space()
        self._since_anchor = 0
        self._anchor_wanted = threading.Event()
        self._closing = False
        self._anchorer: threading.Thread | None = None
        if not readonly:
            self.anchor()  # before any change: from here on this process's pin protects the snapshot
            self._anchorer = threading.Thread(target=self._anchor_when_asked, name="fusestore-anchor", daemon=True)
            self._anchorer.start()

    def _refuse_a_foreign_format(self) -> None:
        """Before anything is written: an environment of another format (or none) is refused untouched.

        An environment that holds nothing but empty databases of ours is new
        (a first open that stopped before it wrote the format).
        """
        if self._holds_nothing():
            return
        raw = None
        try:
            meta = self.env.open_db(b"meta", create=False)
        except lmdb.NotFoundError:
            pass
        else:
            with self.env.begin(db=meta) as txn:
                raw = txn.get(b"format")
        if raw not in READABLE_FORMATS:
            self.env.close()
            raise _unknown_format(self.path.parent, raw)

    def _holds_nothing(self) -> bool:
        with self.env.begin() as txn:
            names = [bytes(key) for key in txn.cursor().iternext(values=False)]
        if any(name not in DATABASES for name in names):
            return False
        for name in names:
            database = self.env.open_db(name, create=False)
            with self.env.begin() as txn:
                if txn.stat(database)["entries"]:
                    return False
        return True

    @overload
    def _open_db(self, name: bytes) -> "lmdb._Database": ...

    @overload
    def _open_db(self, name: bytes, *, optional: bool) -> "lmdb._Database | None": ...

    def _open_db(self, name: bytes, *, optional: bool = False) -> "lmdb._Database | None":
        """A named database; a read-only catalog that lacks one was not written by this format (unless ``optional``)."""
        if not self.readonly:
            return self.env.open_db(name)
        try:
            return self.env.open_db(name, create=False)
        except lmdb.NotFoundError:
            if optional:
                return None
            self.env.close()
            raise errors.UnknownFormat(
                f"catalog at {self.path} has no {name.decode()!r} database: not written by this fusestore format"
            ) from None

    def check_format(self, path: Path) -> bool:
        """True for a new (empty) catalog; raise UnknownFormat for a foreign one.

        A writable open upgrades an older format it reads (see the version log in FORMAT.md).
        """
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"format")
            if raw is None:
                if txn.stat(self.inodes)["entries"]:
                    raise errors.UnknownFormat(f"store at {path} has no format version; refusing to touch it")
                return True
        if raw not in READABLE_FORMATS:
            raise _unknown_format(path, raw)
        if raw != READABLE_FORMATS[0] and not self.readonly:
            with self.write() as tx:
                tx.meta_put(b"format", READABLE_FORMATS[0])
        return False

    @contextmanager
    def read(self) -> Iterator["Txn"]:
        with self.env.begin() as txn:
            yield Txn(self, txn)

    @contextmanager
    def write(self, *, defer_callbacks: bool = False) -> Iterator["Txn"]:
        """One write transaction; callbacks registered with ``after_commit`` run after it commits.

        The Python lock serialises the writers of this process (LMDB would
        block a second writer's thread inside C). The callbacks run after the
        lock is released, so slow work such as deleting a blob holds up no
        other writer; with ``defer_callbacks`` the caller runs them
        (``tx.run_callbacks(tx.callbacks)``) once it has released its own locks.
        Callbacks registered with ``after_abort`` run when it does not commit.
        """
        if self.readonly:
            raise errors.ReadOnly(f"catalog at {self.path} is open read-only")
        with self._write_lock:
            tx = Txn(self, self.env.begin(write=True))
            try:
                yield tx
            except BaseException:
                tx.raw.abort()
                tx.run_callbacks(tx.abort_callbacks)
                raise
            try:
                tx.raw.commit()
            except lmdb.Error as exc:
                tx.run_callbacks(tx.abort_callbacks)
                self._explain_failed_commit(exc)
                raise
            self._since_anchor += 1
            if self._since_anchor >= ANCHOR_EVERY:
                self._anchor_wanted.set()
            behind = self._since_anchor >= ANCHOR_BEHIND
        if behind:
            self.anchor()
        if not defer_callbacks:
            tx.run_callbacks(tx.callbacks)

    def _explain_failed_commit(self, exc: lmdb.Error) -> None:
        """A commit that could not grow the catalog file on a full disk is ENOSPC, not EIO."""
        disk = os.statvfs(self.path)
        if disk.f_bavail * disk.f_frsize < NEARLY_FULL:
            raise errors.NoSpace(f"the disk holding the catalog is full ({exc})") from exc

    def reserve_space(self) -> None:
        """Keep disk blocks allocated past the catalog file's end (called at every checkpoint).

        LMDB copies pages on write, so even deleting a file needs new pages.
        When file data fills the disk, the catalog grows into this reserve,
        and deleting files to free space keeps working.
        """
        if not self._can_reserve:
            return
        disk = os.statvfs(self.path)
        reserve = min(RESERVE_MAX, max(RESERVE_MIN, disk.f_blocks * disk.f_frsize // 100))
        fd = os.open(self.path / "data.mdb", os.O_WRONLY | os.O_CLOEXEC)
        try:
            linux.reserve_beyond_end(fd, reserve)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:  # the filesystem cannot: nothing to keep trying
                self._can_reserve = False
        finally:
            os.close(fd)

    def last_commit(self) -> int:
        """The id of the last committed transaction: what a snapshot of the catalog was taken at."""
        return int(self.env.info()["last_txnid"])

    def recovered(self) -> None:
        """Recovery after a power loss has run: anchors name this boot again."""
        if self.power_lost:
            self.power_lost = False
            self._boot = linux.boot_id()
            self.anchor(force=True)

    def anchor(self, *, closed: bool = False, force: bool = False) -> None:
        """Make every commit so far durable, and the snapshot they reach the one a power loss goes back to.

        The pin is taken and the meta pages read under the writer lock, so
        that they belong to the same transaction; the syncs run outside it.
        While a pin lives, no page freed after its snapshot can be reused, so
        the file grows with every commit (about 11 pages each here) until the
        next anchor: besides the checkpoints, a background thread anchors
        after every ``ANCHOR_EVERY`` commits (and a writer waits for one when
        it falls far behind). Any committed snapshot may be
        anchored: a transaction that names a blob not yet durable lists it
        in ``unsynced`` (see ``store.checkpoints``).
        The previous pin goes only once the new anchor is durable. A caller
        that finds its commits anchored by someone else meanwhile returns at
        once (several deleters waiting for one anchor share it), unless
        ``closed`` or ``force`` asks for a new one anyway.
        """
        wanted = self.last_commit()
        with self._anchor_lock:
            if self._anchored_txnid >= wanted and not (closed or force):
                return
            with self._write_lock:
                self._since_anchor = 0
                pin = self.env.begin()
                fd = os.open(self.path / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    metas = os.pread(fd, 2 * int(self.env.stat()["psize"]), 0)
                finally:
                    os.close(fd)
            assert pin.id() in meta_txnids(metas), "the meta pages do not name the pinned snapshot"
            try:
                self.env.sync(True)
                self._anchors.write(pin.id(), metas, self._boot, closed=closed and not self.power_lost)
            except BaseException:
                pin.abort()
                raise
            previous, self._pin, self._anchored_txnid = self._pin, pin, pin.id()
        if previous is not None:
            previous.abort()

    def flush_commits(self) -> None:
        """Make every commit so far durable (an anchor, unless one covers them already)."""
        self.anchor()

    def sync(self) -> None:
        if self.readonly:
            return
        self.reserve_space()
        self.anchor()

    def _anchor_when_asked(self) -> None:
        while True:
            self._anchor_wanted.wait()
            self._anchor_wanted.clear()
            if self._closing:
                return
            try:
                self.anchor()
            except Exception:  # the next checkpoint's anchor raises it to a caller
                log.exception("a background anchor of the catalog at %s failed", self.path)

    def close(self) -> None:
        if self._anchorer is not None:
            self._closing = True
            self._anchor_wanted.set()
            self._anchorer.join()
        if not self.readonly:
            self.anchor(closed=True)
            assert self._pin is not None
            self._pin.abort()
            self._anchors.close()
        self.env.close()


def _went_down_under(anchor: Anchor | None) -> bool:
    """Whether the machine restarted while the catalog of ``anchor`` was open (a crash of the process is not)."""
    return anchor is not None and not anchor.closed and anchor.boot != linux.boot_id()


def rollback_due(path: Path) -> tuple[int, int] | None:
    """(newest transaction on disk, anchored one) when a power loss left the catalog at ``path`` to be taken back.

    Reads only: the check an inspection makes before it opens the catalog.
    """
    last = AnchorFile(path / "anchor", readonly=True).last()
    if not _went_down_under(last) or not (path / "data.mdb").exists():
        return None
    assert last is not None
    with open(path / "data.mdb", "rb") as data:
        found = data.read(len(last.metas))
    return None if found == last.metas else (max(meta_txnids(found)), last.txnid)


def _open_readonly(path: Path, map_size: int, reader_lock: bool) -> lmdb.Environment:
    """The environment of an existing catalog, opened without writing anything (see ``Catalog``)."""
    if not (path / "data.mdb").is_file():
        raise errors.NoStore(f"no catalog at {path}: not a fusestore store")
    try:
        return lmdb.open(
            str(path), map_size=map_size, max_dbs=16, max_readers=1024,
            readonly=True, lock=reader_lock, readahead=False, create=False,
        )
    except (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError) as exc:
        message = f"catalog at {path} is not an LMDB environment this fusestore reads: {exc}"
        raise errors.UnknownFormat(message) from None


@dataclass
class Txn:
    """A transaction with typed accessors for every record kind."""

    catalog: Catalog
    raw: lmdb.Transaction
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    abort_callbacks: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def after_abort(self, callback: Callable[[], None]) -> None:
        self.abort_callbacks.append(callback)

    @staticmethod
    def run_callbacks(callbacks: list[Callable[[], None]]) -> None:
        while callbacks:
            callbacks.pop(0)()

    def _get(self, key: bytes, db: "lmdb._Database") -> bytes | None:
        """A value as bytes (the environment is opened without buffers, so LMDB copies it out)."""
        return cast("bytes | None", self.raw.get(key, db=db))

    # -- meta ---------------------------------------------------------------

    def meta_get(self, key: bytes) -> bytes | None:
        return self._get(key, self.catalog.meta)

    def meta_put(self, key: bytes, value: bytes) -> None:
        self.raw.put(key, value, db=self.catalog.meta)

    def new_ino(self) -> int:
        raw = self.meta_get(b"next_ino")
        ino = U64.unpack(raw)[0] if raw else ROOT_INO + 1
        self.meta_put(b"next_ino", u64(ino + 1))
        return ino

    def meta_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every meta key and value (inspection)."""
        with self.raw.cursor(db=self.catalog.meta) as cur:
            for key, value in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield bytes(key), bytes(value)

    # -- resources (the seed's ResourceCatalog) -----------------------------

    def resource(self, digest: bytes) -> Resource | None:
        raw = self._get(digest, self.catalog.resources)
        return Resource.decode(digest, raw) if raw is not None else None

    def save_resource(self, res: Resource) -> None:
        self.raw.put(res.digest, res.encode(), db=self.catalog.resources)

    def get(self, digest: bytes) -> Resource:
        """The complete resource ``digest``: NotFound, UploadPending while pending, ContentLost when lost."""
        res = self.resource(digest)
        if res is None:
            raise unknown_resource(digest)
        if res.state == LOST:
            raise errors.ContentLost(f"the bytes of {digest.hex()} are lost (fsck found their blob damaged or "
                                     "missing); writing the same content again restores them")
        if not res.complete:
            raise errors.UploadPending(f"resource {digest.hex()} is still being uploaded")
        return res

    def find(self, hash_hex: str) -> bytes:
        """The digest of the complete resource with that hash (same errors as ``get``)."""
        try:
            digest = bytes.fromhex(hash_hex)
        except ValueError:
            raise errors.InvalidName(f"not a hash: {hash_hex!r}") from None
        return self.get(digest).digest

    def put(self, digest: bytes, length: int) -> Resource:
        """One more reference to ``digest``; a new resource starts pending with refcount 1."""
        res = self.resource(digest)
        if res is None:
            res = Resource(digest, length, 0)
        elif res.length != length:
            raise errors.LengthMismatch(
                f"resource {digest.hex()} has length {res.length}, not {length}"
            )
        res.refcount += 1
        self.save_resource(res)
        return res

    def upload_complete(self, digest: bytes) -> None:
        res = self.resource(digest)
        if res is None:
            raise unknown_resource(digest)
        if res.complete:
            raise errors.AlreadyExists(f"resource {digest.hex()} was already uploaded")
        res.state = COMPLETE
        self.save_resource(res)

    def remove(self, digest: bytes) -> bool:
        """Drop one reference; True when that was the last and the resource is gone."""
        res = self.resource(digest)
        if res is None:
            raise unknown_resource(digest)
        res.refcount -= 1
        if res.refcount <= 0:
            self.delete_resource(digest)
            return True
        self.save_resource(res)
        return False

    def delete_resource(self, digest: bytes) -> None:
        """The resource's row goes, whatever its refcount (its blob is the caller's to delete)."""
        self.raw.delete(digest, db=self.catalog.resources)
        self.raw.delete(digest, db=self.catalog.unsynced)

    def resources(self) -> Iterator[Resource]:
        with self.raw.cursor(db=self.catalog.resources) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield Resource.decode(bytes(key), raw)

    # -- inodes -------------------------------------------------------------

    def inode(self, ino: int) -> Inode | None:
        raw = self._get(u64(ino), self.catalog.inodes)
        return Inode.decode(ino, raw) if raw is not None else None

    def existing_inode(self, ino: int) -> Inode:
        """The inode ``ino``, or NotFound."""
        node = self.inode(ino)
        if node is None:
            raise errors.NotFound(f"no inode {ino}")
        return node

    def save_inode(self, node: Inode) -> None:
        self.raw.put(u64(node.ino), node.encode(), db=self.catalog.inodes)

    def delete_inode(self, ino: int) -> None:
        self.raw.delete(u64(ino), db=self.catalog.inodes)
        for name, _ in list(self.xattr_items(ino)):
            self.raw.delete(u64(ino) + name, db=self.catalog.xattrs)

    def inodes(self) -> Iterator[Inode]:
        with self.raw.cursor(db=self.catalog.inodes) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield Inode.decode(U64.unpack(key)[0], raw)

    def inodes_with_content(self, digest: bytes) -> Iterator[Inode]:
        """The regular files whose committed content is ``digest``.

        One scan of the table (there is no index by content), decoding only
        the records that end with the digest, which is where a regular
        file's content is encoded.
        """
        with self.raw.cursor(db=self.catalog.inodes) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                if raw[-len(digest):] == digest:
                    node = Inode.decode(U64.unpack(key)[0], raw)
                    if node.content == digest:
                        yield node

    # -- directory entries ----------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int | None:
        raw = self._get(u64(parent) + name, self.catalog.dirents)
        return U64.unpack(raw)[0] if raw is not None else None

    def add_entry(self, parent: int, name: bytes, ino: int) -> None:
        self.raw.put(u64(parent) + name, u64(ino), db=self.catalog.dirents)

    def remove_entry(self, parent: int, name: bytes) -> None:
        self.raw.delete(u64(parent) + name, db=self.catalog.dirents)

    def entries(self, parent: int, after: bytes = b"") -> Iterator[tuple[bytes, int]]:
        """Entries of ``parent`` in name order, starting after ``after``."""
        prefix = u64(parent)
        with self.raw.cursor(db=self.catalog.dirents) as cur:
            if not cur.set_range(prefix + after):
                return
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                if not key.startswith(prefix):
                    return
                name = bytes(key[8:])
                if after and name == after:
                    continue
                yield name, U64.unpack(raw)[0]

    def has_entries(self, parent: int) -> bool:
        return next(self.entries(parent), None) is not None

    def all_entries(self) -> Iterator[tuple[int, bytes, int]]:
        """Every directory entry as (parent, name, child), in parent then name order (inspection)."""
        with self.raw.cursor(db=self.catalog.dirents) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield U64.unpack_from(key)[0], bytes(key[8:]), U64.unpack(raw)[0]

    # -- extended attributes ------------------------------------------------

    def xattr(self, ino: int, name: bytes) -> bytes | None:
        return self._get(u64(ino) + name, self.catalog.xattrs)

    def set_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        self.raw.put(u64(ino) + name, value, db=self.catalog.xattrs)

    def remove_xattr(self, ino: int, name: bytes) -> bool:
        return self.raw.delete(u64(ino) + name, db=self.catalog.xattrs)

    def xattr_items(self, ino: int) -> Iterator[tuple[bytes, bytes]]:
        prefix = u64(ino)
        with self.raw.cursor(db=self.catalog.xattrs) as cur:
            if not cur.set_range(prefix):
                return
            for key, value in cast("Iterator[tuple[bytes, bytes]]", cur):
                if not key.startswith(prefix):
                    return
                yield bytes(key[8:]), bytes(value)

    def all_xattrs(self) -> Iterator[tuple[int, bytes, bytes]]:
        """Every extended attribute as (ino, name, value) (inspection)."""
        with self.raw.cursor(db=self.catalog.xattrs) as cur:
            for key, value in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield U64.unpack_from(key)[0], bytes(key[8:]), bytes(value)

    # -- orphans: unlinked while open ------------------------------------------

    def add_orphan(self, ino: int) -> None:
        self.raw.put(u64(ino), b"", db=self.catalog.orphans)

    def remove_orphan(self, ino: int) -> None:
        self.raw.delete(u64(ino), db=self.catalog.orphans)

    def orphans(self) -> list[int]:
        with self.raw.cursor(db=self.catalog.orphans) as cur:
            return [U64.unpack(key)[0] for key in cur.iternext(values=False)]

    # -- blobs published since the last checkpoint -----------------------------

    def add_unsynced(self, digest: bytes, checkpoint: int) -> None:
        self.raw.put(digest, u64(checkpoint), db=self.catalog.unsynced)

    def remove_unsynced_up_to(self, checkpoint: int) -> None:
        """Forget the blobs that checkpoints up to number ``checkpoint`` covered."""
        with self.raw.cursor(db=self.catalog.unsynced) as cur:
            done = [bytes(key) for key, value in cur if U64.unpack(value)[0] <= checkpoint]
        for digest in done:
            self.raw.delete(digest, db=self.catalog.unsynced)

    def has_unsynced(self) -> bool:
        return self.raw.stat(self.catalog.unsynced)["entries"] > 0

    def unsynced(self) -> list[bytes]:
        with self.raw.cursor(db=self.catalog.unsynced) as cur:
            return [bytes(key) for key in cur.iternext(values=False)]

    def unsynced_items(self) -> Iterator[tuple[bytes, int]]:
        """Every unsynced blob as (digest, number of the checkpoint that will cover it) (inspection)."""
        with self.raw.cursor(db=self.catalog.unsynced) as cur:
            for key, value in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield bytes(key), U64.unpack(value)[0]

    # -- blobs freed since the last checkpoint ------------------------------------

    def add_freed(self, digest: bytes) -> None:
        self.raw.put(digest, b"", db=self.catalog.freed)

    def freed(self) -> list[bytes]:
        with self.raw.cursor(db=self.catalog.freed) as cur:
            return [bytes(key) for key in cur.iternext(values=False)]

    def forget_freed(self, digests: set[bytes]) -> None:
        """Forget these freed blobs (their deletion is durable)."""
        for digest in digests:
            self.raw.delete(digest, db=self.catalog.freed)

    # -- staging records ----------------------------------------------------

    def add_staging(self, record: StagingRecord) -> None:
        self.raw.put(record.name.encode("ascii"), record.encode(), db=self.catalog.staging)

    def staging_record(self, name: str) -> StagingRecord | None:
        raw = self._get(name.encode("ascii"), self.catalog.staging)
        return StagingRecord.decode(name.encode("ascii"), raw) if raw is not None else None

    def remove_staging(self, name: str) -> None:
        self.raw.delete(name.encode("ascii"), db=self.catalog.staging)
        self.raw.delete(name.encode("ascii"), db=self._synced_db())

    def _synced_db(self) -> "lmdb._Database":
        assert self.catalog.synced is not None, "only a read-only catalog of format 1 lacks it"
        return self.catalog.synced

    def set_synced(self, name: str, synced: Synced) -> None:
        """What an fsync made durable of the change recorded as ``name`` (see ``Writes.sync_staged``)."""
        self.raw.put(name.encode("ascii"), synced.encode(), db=self._synced_db())

    def synced(self, name: str) -> Synced | None:
        if self.catalog.synced is None:
            return None
        raw = self._get(name.encode("ascii"), self.catalog.synced)
        return Synced.decode(raw) if raw is not None else None

    def synced_items(self) -> Iterator[tuple[str, Synced]]:
        """Every fsynced change's staging name and what its fsync made durable (inspection)."""
        if self.catalog.synced is None:
            return
        with self.raw.cursor(db=self.catalog.synced) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield bytes(key).decode("ascii"), Synced.decode(raw)

    def staging_records(self) -> Iterator[StagingRecord]:
        with self.raw.cursor(db=self.catalog.staging) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield StagingRecord.decode(bytes(key), raw)


def unknown_resource(digest: bytes) -> errors.NotFound:
    """The error for content the catalog does not hold: one message, so that a refusal can look the same."""
    return errors.NotFound(f"no resource {digest.hex()}")


def verify_structure(path: Path) -> list[str]:
    """LMDB's own offline audit of ``<path>/data.mdb``, read as raw bytes (never through liblmdb).

    Each line is a structural problem; none means LMDB may open the file.
    UnknownFormat when the file is not an LMDB data file at all. Run it
    before opening a catalog whose last writer may have been cut off.
    """
    from lmdb import verify  # py-lmdb's ``python -m lmdb verify``

    try:
        found = verify.verify(str(path), subdir=True)  # type: ignore[no-untyped-call]
    except verify.VerifyError as exc:
        raise errors.UnknownFormat(f"catalog at {path} is not an LMDB data file this fusestore reads: {exc}") from None
    return [str(line) for line in found]


def _unknown_format(store: Path, raw: bytes | None) -> errors.UnknownFormat:
    shown = "none" if raw is None else repr(raw.decode(errors="replace"))
    readable = " and ".join(raw.decode() for raw in READABLE_FORMATS)
    return errors.UnknownFormat(f"store at {store} has format {shown}; this fusestore reads formats "
                                f"{readable} only: use a matching fusestore version")
