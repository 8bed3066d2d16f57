"""The catalog: every piece of metadata, in one LMDB environment.

One write transaction is one consistent change. Nothing here knows about
paths, namespaces or FUSE: the catalog stores records and keeps their
encodings; the store decides what a change means.

The named databases, their keys and values, byte by byte, are in
``docs/FORMAT.md``; ``records`` encodes them.

A commit waits for no disk (``sync=False``): it survives a crash of the
process, and a checkpoint makes everything committed so far durable by
*anchoring* the catalog (``anchor``, ``anchoring``), which also makes a
power loss take the catalog back to the last anchored snapshot instead of
leaving a torn tree. (Committing with ``sync=True, metasync=False``, the mode in which
LMDB itself promises integrity, cost an fdatasync per commit: about 3,800
commits/s here, where ``sync=False`` makes 110,000.)
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import overload

import lmdb

from .. import errors, linux, private
from .anchor import AnchorFile, restore, rollback_due, went_down_under
from .anchoring import Anchoring, meta_pages
from .records import FORMAT_VERSION, READABLE_FORMATS
from .txn import Txn

DATABASES = (b"meta", b"resources", b"inodes", b"dirents", b"xattrs", b"staging", b"synced", b"orphans", b"unsynced",
             b"freed", b"chunks", b"extents", b"packs", b"packchunks")
MAP_SIZE = 1 << 40  # address space only: the file grows with its content
NEARLY_FULL = 16 << 20  # free bytes below which a failed commit is taken for a full disk
SHORT_OF_SPACE = 64 << 20  # free bytes below which freed space must come back at once (``disk_nearly_full``)
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
        self._write_lock = threading.Lock()
        self._anchoring: Anchoring | None = None
        if readonly:
            due = rollback_due(path)
            if due is not None:
                raise errors.NeedsRecovery(
                    f"catalog at {path} was open when the machine went down: recovery must take it back to "
                    f"its last checkpoint (transaction {due[1]}; the disk holds {due[0]}); mount the store "
                    "or run fusestore fsck --repair first"
                )
            self.power_lost = went_down_under(AnchorFile(path / "anchor", readonly=True).last())
            self.env = _open_readonly(path, map_size, reader_lock)
        else:
            if not (path / "data.mdb").exists():
                _create(path, map_size)
            last = AnchorFile(path / "anchor", readonly=True).last()  # only this format writes one
            self.power_lost = went_down_under(last)
            if last is not None and self.power_lost:
                self.rolled_back = restore(path / "data.mdb", last)
            self.env = _open_writable(path, map_size)
            self._refuse_a_foreign_format()
            self.env.reader_check()  # drop reader slots of dead processes
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
        self.chunks = self._open_db(b"chunks", optional=readonly)  # formats 1 and 2 have none until upgraded
        self.extents = self._open_db(b"extents", optional=readonly)
        self.packs = self._open_db(b"packs", optional=readonly)
        self.packchunks = self._open_db(b"packchunks", optional=readonly)
        self._can_reserve = not readonly
        self.reserve_space()
        if not readonly:
            boot = last.boot if last is not None and self.power_lost else linux.boot_id()
            self._anchoring = Anchoring(self.env, path, self._write_lock, boot=boot,
                                        closing_counts=not self.power_lost)

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
            assert self._anchoring is not None
            behind = self._anchoring.committed()
        if behind:  # the caller may hold a stripe lock that the deletions waiting for an anchor take
            self._anchoring.anchor(run_waiting=False)
        if not defer_callbacks:
            tx.run_callbacks(tx.callbacks)

    def _explain_failed_commit(self, exc: lmdb.Error) -> None:
        """A commit that could not grow the catalog file on a full disk is ENOSPC, not EIO."""
        disk = os.statvfs(self.path)
        if disk.f_bavail * disk.f_frsize < NEARLY_FULL:
            raise errors.NoSpace(f"the disk holding the catalog is full ({exc})") from exc

    def disk_nearly_full(self) -> bool:
        """Whether the disk holding the catalog has less free than 2% of its size or 64 MiB, whichever is more."""
        disk = os.statvfs(self.path)
        return disk.f_bavail * disk.f_frsize < max(SHORT_OF_SPACE, disk.f_blocks * disk.f_frsize // 50)

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
        """Recovery after a power loss has run: anchors name this boot again, and a close counts."""
        if self.power_lost and self._anchoring is not None:
            self.power_lost = False
            self._anchoring.boot, self._anchoring.closing_counts = linux.boot_id(), True
            self._anchoring.anchor(force=True)

    def flush_commits(self) -> None:
        """Make every commit so far durable (an anchor, unless one covers them already)."""
        assert self._anchoring is not None, "a read-only catalog commits nothing"
        self._anchoring.anchor()

    def anchor_soon(self) -> None:
        """After a commit that rewrote many pages: anchor soon on another thread, so that LMDB may reuse them.

        Until the next anchor the pin keeps every page a commit replaced,
        and the file grows by them.
        """
        assert self._anchoring is not None, "a read-only catalog commits nothing"
        self._anchoring.soon()

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` soon, on another thread, once every commit so far is durable."""
        assert self._anchoring is not None, "a read-only catalog commits nothing"
        self._anchoring.when_durable(callback)

    def sync(self) -> None:
        if self._anchoring is None:
            return
        self.reserve_space()
        self._anchoring.anchor()

    def close(self) -> None:
        if self._anchoring is not None:
            self._anchoring.close()
        self.env.close()


def _open_writable(path: Path, map_size: int) -> lmdb.Environment:
    return lmdb.open(str(path), map_size=map_size, max_dbs=32, max_readers=1024, sync=False, readahead=False,
                     lock=True, mode=private.FILE_MODE)


def _create(path: Path, map_size: int) -> None:
    """A new catalog appears whole or not at all: built beside its place, anchored, then renamed into it.

    Made in place, a power loss during the first open could leave a data
    file LMDB cannot open, and no anchor to go back to. A directory without
    a data file that holds anything but LMDB's lock file is not ours to
    replace.
    """
    if path.exists():
        if set(os.listdir(path)) - {"lock.mdb"}:
            raise errors.UnknownFormat(f"{path} has no data.mdb but other files: not a catalog; refusing to touch it")
        shutil.rmtree(path)
    building = path.with_name(path.name + ".new")
    shutil.rmtree(building, ignore_errors=True)  # what a creation cut short left
    private.make_dirs(building)
    env = _open_writable(building, map_size)
    try:
        for name in DATABASES:
            env.open_db(name)
        env.sync(True)
        metas = meta_pages(env, building)
        txnid = int(env.info()["last_txnid"])
    finally:
        env.close()
    anchors = AnchorFile(building / "anchor")
    try:
        anchors.write(txnid, metas, linux.boot_id(), closed=True)
    finally:
        anchors.close()
    linux.fsync_path(building)
    os.rename(building, path)
    linux.fsync_path(path.parent)


def _open_readonly(path: Path, map_size: int, reader_lock: bool) -> lmdb.Environment:
    """The environment of an existing catalog, opened without writing anything (see ``Catalog``)."""
    if not (path / "data.mdb").is_file():
        raise errors.NoStore(f"no catalog at {path}: not a fusestore store")
    try:
        return lmdb.open(
            str(path), map_size=map_size, max_dbs=32, max_readers=1024,
            readonly=True, lock=reader_lock, readahead=False, create=False,
        )
    except (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError) as exc:
        message = f"catalog at {path} is not an LMDB environment this fusestore reads: {exc}"
        raise errors.UnknownFormat(message) from None


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
    *newest, oldest = (raw.decode() for raw in READABLE_FORMATS)
    readable = f"{', '.join(newest)} and {oldest}"
    newer = raw is not None and raw.isdigit() and int(raw) > FORMAT_VERSION
    advice = ("a newer fusestore wrote it: open it with that version (this one changed nothing)" if newer
              else "use a matching fusestore version")
    return errors.UnknownFormat(f"store at {store} has format {shown}; this fusestore reads formats "
                                f"{readable} only: {advice}")
