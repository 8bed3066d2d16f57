"""The catalog: every piece of metadata, in one LMDB environment.

One write transaction is one consistent change. Nothing here knows about
paths, namespaces or FUSE: the catalog stores records and keeps their
encodings; the store decides what a change means.

The named databases, their keys and values, byte by byte, are in
``docs/FORMAT.md``; ``records`` encodes them.

Every commit flushes its data pages and defers the flush of the meta page
(``sync=True, metasync=False``): the one mode without a sync per meta page
in which LMDB promises integrity across a power loss (it may lose the last
transaction, never corrupt). ``sync=False`` was ten times faster and, in
the test suite's power-cut simulator, left a catalog that would not open
after about one cut in four: a later transaction reuses pages the last
synced meta page still points to. A checkpoint (``store.checkpoints``)
syncs the meta page too.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import lmdb

from .. import errors, linux
from .records import (
    COMPLETE,
    FORMAT_VERSION,
    LOST,
    ROOT_INO,
    U64,
    Inode,
    Resource,
    StagingRecord,
    u64,
)

DATABASES = (b"meta", b"resources", b"inodes", b"dirents", b"xattrs", b"staging", b"orphans", b"unsynced", b"freed")
MAP_SIZE = 1 << 40  # address space only: the file grows with its content
NEARLY_FULL = 16 << 20  # free bytes below which a failed commit is taken for a full disk
RESERVE_MAX = 64 << 20  # disk space kept allocated past the catalog's end: 1% of the disk, up to this
RESERVE_MIN = 1 << 20


class Catalog:
    """The LMDB environment and its named databases.

    ``readonly=True`` is for inspections (fsck, stats): the directory is never
    created, no disk space is reserved and nothing is written, not even
    LMDB's lock file unless ``reader_lock`` asks for it. Without the lock
    file LMDB does no locking, so the caller must make sure no writer runs
    (``InspectionLock``); with ``reader_lock=True`` this reader takes a slot
    in ``lock.mdb`` (which needs write access to that file), so that a live
    writer keeps the pages of this reader's snapshot.
    """

    def __init__(
        self, path: Path, *, map_size: int = MAP_SIZE, readonly: bool = False, reader_lock: bool = False
    ) -> None:
        self.path = path = Path(path)
        self.readonly = readonly
        if readonly:
            self.env = _open_readonly(path, map_size, reader_lock)
        else:
            path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(
                str(path), map_size=map_size, max_dbs=16, max_readers=1024,
                sync=True, metasync=False, readahead=False, lock=True,
            )
            self._refuse_a_foreign_format()
            self.env.reader_check()  # drop reader slots of dead processes
        self._write_lock = threading.Lock()
        self.meta = self._open_db(b"meta")
        self.resources = self._open_db(b"resources")
        self.inodes = self._open_db(b"inodes")
        self.dirents = self._open_db(b"dirents")
        self.xattrs = self._open_db(b"xattrs")
        self.staging = self._open_db(b"staging")
        self.orphans = self._open_db(b"orphans")
        self.unsynced = self._open_db(b"unsynced")
        self.freed = self._open_db(b"freed")
        self._can_reserve = not readonly
        self.reserve_space()

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
        if raw != str(FORMAT_VERSION).encode():
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

    def _open_db(self, name: bytes) -> "lmdb._Database":
        """A named database; a read-only catalog that lacks one was not written by this format."""
        if not self.readonly:
            return self.env.open_db(name)
        try:
            return self.env.open_db(name, create=False)
        except lmdb.NotFoundError:
            self.env.close()
            raise errors.UnknownFormat(
                f"catalog at {self.path} has no {name.decode()!r} database: not written by this fusestore format"
            ) from None

    def check_format(self, path: Path) -> bool:
        """True for a new (empty) catalog; raise UnknownFormat for a foreign one."""
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"format")
            if raw is None:
                if txn.stat(self.inodes)["entries"]:
                    raise errors.UnknownFormat(f"store at {path} has no format version; refusing to touch it")
                return True
        if raw != str(FORMAT_VERSION).encode():
            raise _unknown_format(path, raw)
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

    def flush_commits(self) -> None:
        """Make every commit so far durable, the last one's meta page included (one fdatasync)."""
        self.env.sync(True)

    def sync(self) -> None:
        if self.readonly:
            return
        self.reserve_space()
        self.env.sync(True)

    def close(self) -> None:
        if not self.readonly:
            self.env.sync(True)
        self.env.close()


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
            self.raw.delete(digest, db=self.catalog.resources)
            self.raw.delete(digest, db=self.catalog.unsynced)
            return True
        self.save_resource(res)
        return False

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
    return errors.UnknownFormat(f"store at {store} has format {shown}; this fusestore reads format "
                                f"{FORMAT_VERSION} only: use a matching fusestore version")
