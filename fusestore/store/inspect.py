"""A read-only look at a store: what fsck and stats read, without changing a byte.

``Inspection.open(path)`` takes the store's lock shared (``InspectionLock``),
opens the catalog read-only and reads the packs, pool and staging
directories by listing them (a chunk's stored bytes through a descriptor
of its own): it creates no file, writes none and runs no recovery, so it
can look at a store a crash left behind exactly as it was left. Every scan
of one inspection reads the same catalog transaction.

``Inspection.over(catalog, path)`` is the same look through a catalog this
process has open already (a ``Store``): LMDB must not open one environment
twice in a process, since closing the second copy drops the first's locks
(py-lmdb refuses it), so one process holds one inspection of a store at a time.

Paths are given from the mount root (``/<env-uuid>/dir/file``) as str,
with non-UTF-8 bytes kept by surrogateescape.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .. import errors
from ..catalog import ROOT_INO, Catalog, Chunk, Extent, Inode, Pack, Resource, StagingRecord, Txn
from ..catalog import rollback_due as catalog_rollback_due
from ..pool import memory_root, staging_names
from .locking import InspectionLock

HEX = frozenset("0123456789abcdef")


class Entry(NamedTuple):
    """One directory entry: ``name`` in directory ``parent`` names inode ``child``."""

    parent: int
    name: bytes
    child: int


class Xattr(NamedTuple):
    ino: int
    name: bytes
    value: bytes


class Unsynced(NamedTuple):
    """A pack appended to (or, in an older store, a blob stored) since the last checkpoint, and the checkpoint
    that will cover it: ``key`` is the pack's u64 id (8 bytes) or the blob's digest (32 bytes)."""

    key: bytes
    checkpoint: int


class PackIndexRow(NamedTuple):
    """A row of the index of chunks by place: the chunk ``digest`` is at ``offset`` in ``pack``."""

    pack: int
    offset: int
    digest: bytes


@dataclass(frozen=True)
class PackFile:
    """A file in ``packs/`` named as a pack (16 hex digits)."""

    pack: int
    path: str
    size: int


@dataclass(frozen=True)
class BlobFile:
    """A file in the pool named as a blob (``pool/ab/cd/<64 hex>``)."""

    digest: bytes
    path: str
    size: int


def decode_name(name: bytes) -> str:
    """A name as str; bytes that are not UTF-8 survive as surrogates (``os.fsencode`` gives them back)."""
    return name.decode("utf-8", "surrogateescape")


def rollback_due(store_path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(newest transaction on disk, anchored one) when a power loss left the store's catalog to be taken back."""
    return catalog_rollback_due(Path(store_path) / "catalog")


class Inspection:
    """One consistent, read-only view of a store's catalog, pool and staging directory."""

    def __init__(self, path: Path, tx: Txn, *, live: bool, retired: frozenset[str] = frozenset()) -> None:
        self.path = Path(path)
        self.tx = tx
        self.live = live  # another process owns the store: the directories may have moved on
        self.retired = retired  # staging files of committed changes the owner deletes at its next checkpoint
        self._inodes: dict[int, Inode] | None = None
        self._names: dict[int, list[tuple[int, bytes]]] | None = None
        self._users: dict[bytes, list[int]] | None = None
        self._pool: tuple[list[BlobFile], list[str]] | None = None
        self._packs: tuple[list[PackFile], list[str]] | None = None
        self._extents: dict[bytes, list[Extent]] | None = None
        self._chunk_users: dict[bytes, set[bytes]] | None = None
        store_id = tx.store_id()
        self._memory = memory_root(store_id, self.path, create=False) if store_id is not None else None

    @classmethod
    @contextmanager
    def open(cls, store_path: str | os.PathLike[str], *, allow_live: bool = False) -> Iterator["Inspection"]:
        """Look at the store at ``store_path`` without changing it.

        NoStore when there is no store there, UnknownFormat for a catalog of
        another format, StoreLocked while a process owns the store (unless
        ``allow_live``: see ``InspectionLock`` for what a live look means).
        """
        path = Path(store_path)
        if not path.is_dir():
            raise errors.NoStore(f"no store at {path}: not a directory")
        with ExitStack() as stack:
            lock = InspectionLock(path, allow_live=allow_live)
            stack.callback(lock.release)
            if lock.live and lock.owner_pid == os.getpid():
                raise errors.StoreLocked(
                    f"store {path} is open in this process: inspect it with Inspection.over(store.catalog, ...)"
                )
            catalog = Catalog(path / "catalog", readonly=True, reader_lock=lock.live)
            stack.callback(catalog.close)
            if catalog.check_format(path):
                raise errors.NoStore(f"no store at {path}: its catalog was never initialised")
            tx = stack.enter_context(catalog.read())
            yield cls(path, tx, live=lock.live)

    @classmethod
    @contextmanager
    def over(cls, catalog: Catalog, store_path: str | os.PathLike[str],
             retired: frozenset[str] = frozenset()) -> Iterator["Inspection"]:
        """Look through a catalog this process has open (the store's own), in one read transaction."""
        with catalog.read() as tx:
            yield cls(Path(store_path), tx, live=True, retired=retired)

    # -- the catalog's tables ---------------------------------------------------------

    def resources(self) -> Iterator[Resource]:
        return self.tx.resources()

    def resource(self, digest: bytes) -> Resource | None:
        return self.tx.resource(digest)

    def inodes(self) -> Iterator[Inode]:
        return self.tx.inodes()

    def inode(self, ino: int) -> Inode | None:
        return self._inodes.get(ino) if self._inodes is not None else self.tx.inode(ino)

    def inode_map(self) -> dict[int, Inode]:
        """Every inode by number (read once, kept: most checks need several passes)."""
        if self._inodes is None:
            self._inodes = {node.ino: node for node in self.tx.inodes()}
        return self._inodes

    def entries(self) -> Iterator[Entry]:
        return (Entry(*entry) for entry in self.tx.all_entries())

    def xattrs(self) -> Iterator[Xattr]:
        return (Xattr(*item) for item in self.tx.all_xattrs())

    def staging_records(self) -> Iterator[StagingRecord]:
        return self.tx.staging_records()

    def orphans(self) -> list[int]:
        return self.tx.orphans()

    def unsynced(self) -> Iterator[Unsynced]:
        return (Unsynced(*item) for item in self.tx.unsynced_items())

    def freed(self) -> list[bytes]:
        return self.tx.freed()

    def meta(self) -> dict[bytes, bytes]:
        return dict(self.tx.meta_items())

    def chunks(self) -> Iterator[Chunk]:
        return self.tx.chunks()

    def chunk(self, digest: bytes) -> Chunk | None:
        return self.tx.chunk(digest)

    def extents(self) -> Iterator[tuple[bytes, Extent]]:
        """Every extent as (content digest, extent), by content then offset."""
        return self.tx.all_extents()

    def extents_of(self, digest: bytes) -> list[Extent]:
        return list(self.tx.extents(digest))

    def extent_map(self) -> dict[bytes, list[Extent]]:
        """Every content's extents in order, by content digest (read once, kept: several checks walk them)."""
        if self._extents is None:
            extents: dict[bytes, list[Extent]] = defaultdict(list)
            for digest, extent in self.tx.all_extents():
                extents[digest].append(extent)
            self._extents = dict(extents)
        return self._extents

    def contents_using_chunk(self, digest: bytes) -> set[bytes]:
        """The contents some extent of which names the chunk ``digest``."""
        if self._chunk_users is None:
            users: dict[bytes, set[bytes]] = defaultdict(set)
            for content, extents in self.extent_map().items():
                for extent in extents:
                    users[extent.chunk].add(content)
            self._chunk_users = dict(users)
        return self._chunk_users.get(digest, set())

    def paths_using_chunk(self, digest: bytes) -> list[str]:
        """The path of every hard link of every file whose content uses the chunk ``digest``, sorted."""
        return sorted({path for content in self.contents_using_chunk(digest) for path in self.paths_using(content)})

    def pack_rows(self) -> Iterator[Pack]:
        return self.tx.packs()

    def stored_bytes_of(self, chunk: Chunk) -> bytes:
        """The chunk's stored bytes as its pack file holds them (fewer when the file ends early).

        Read through a descriptor of its own, so that nothing is created:
        FileNotFoundError when the pack file is missing.
        """
        fd = os.open(self.path / "packs" / f"{chunk.pack:016x}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            parts: list[bytes] = []
            offset, left = chunk.offset, chunk.stored
            while left > 0:
                part = os.pread(fd, left, offset)
                if not part:
                    break
                parts.append(part)
                offset, left = offset + len(part), left - len(part)
            return b"".join(parts)
        finally:
            os.close(fd)

    def pack_index(self) -> Iterator[PackIndexRow]:
        return (PackIndexRow(*row) for row in self.tx.pack_index())

    # -- the directories --------------------------------------------------------------

    def blobs(self) -> list[BlobFile]:
        """Every file of the pool named as a blob, in digest order."""
        return self._scan_pool()[0]

    def pool_debris(self) -> list[str]:
        """Paths under the pool that are not blobs where they belong (anything a blob's name does not explain)."""
        return self._scan_pool()[1]

    def pack_files(self) -> list[PackFile]:
        """Every file of ``packs/`` named as a pack, in id order."""
        return self._scan_packs()[0]

    def pack_debris(self) -> list[str]:
        """Paths under ``packs/`` that are not named as packs."""
        return self._scan_packs()[1]

    def pack_file_size(self, pack: int) -> int | None:
        """The length of one pack's file, None when it has none (a stat, not a scan of ``packs/``)."""
        try:
            return os.stat(self.path / "packs" / f"{pack:016x}").st_size
        except FileNotFoundError:
            return None

    def _scan_packs(self) -> tuple[list[PackFile], list[str]]:
        if self._packs is None:
            files: list[PackFile] = []
            debris: list[str] = []
            try:
                found = list(os.scandir(self.path / "packs"))
            except FileNotFoundError:
                found = []
            for item in found:
                if item.is_file(follow_symlinks=False) and len(item.name) == 16 and set(item.name) <= HEX:
                    try:
                        size = item.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # deleted since the scan began (a live store goes on)
                        continue
                    files.append(PackFile(int(item.name, 16), item.path, size))
                else:
                    debris.append(item.path)
            self._packs = (sorted(files, key=lambda f: f.pack), sorted(debris))
        return self._packs

    def staging_files(self) -> list[str]:
        """Names in the staging directory and the memory one (``memory_staging``), but those the owner retires."""
        try:
            names = os.listdir(self.path / "staging")
        except FileNotFoundError:
            names = []
        names += [name for name in staging_names(self._memory) if name not in names]
        return sorted(name for name in names if name.removesuffix(".blob") not in self.retired)

    def staging_size(self, name: str) -> int:
        """The size of the staging file ``name``, in memory or on the disk (the one recovery would take)."""
        if self._memory is not None:
            try:
                return os.stat(f"{self._memory}/{name}").st_size
            except FileNotFoundError:
                pass
        return os.stat(self.path / "staging" / name).st_size

    def _scan_pool(self) -> tuple[list[BlobFile], list[str]]:
        if self._pool is None:
            blobs: list[BlobFile] = []
            debris: list[str] = []
            self._walk_pool(str(self.path / "pool"), 0, "", blobs, debris)
            self._pool = (sorted(blobs, key=lambda b: b.digest), sorted(debris))
        return self._pool

    def _walk_pool(self, directory: str, depth: int, prefix: str, blobs: list[BlobFile], debris: list[str]) -> None:
        """Blobs sit at depth 2 under directories named by their first two and next two hex digits."""
        try:
            found = list(os.scandir(directory))
        except FileNotFoundError:
            return
        for item in found:
            name = item.name
            is_dir = item.is_dir(follow_symlinks=False)
            if depth < 2 and is_dir and len(name) == 2 and set(name) <= HEX:
                self._walk_pool(item.path, depth + 1, prefix + name, blobs, debris)
            elif (depth == 2 and item.is_file(follow_symlinks=False) and len(name) == 64
                  and set(name) <= HEX and name.startswith(prefix)):
                try:
                    size = item.stat(follow_symlinks=False).st_size
                except FileNotFoundError:  # deleted since the scan began (a live store's deletions go on)
                    continue
                blobs.append(BlobFile(bytes.fromhex(name), item.path, size))
            else:
                debris.append(item.path)

    # -- reverse lookups ----------------------------------------------------------------

    def names_of(self, ino: int) -> list[tuple[int, bytes]]:
        """(parent, name) of every entry naming ``ino``: one per hard link (from one dirents scan, kept)."""
        if self._names is None:
            names: dict[int, list[tuple[int, bytes]]] = defaultdict(list)
            for parent, name, child in self.tx.all_entries():
                names[child].append((parent, name))
            self._names = dict(names)
        return self._names.get(ino, [])

    def path_of(self, ino: int) -> str | None:
        """The first path of ``ino`` from the mount root, in sort order; None when no name leads to the root."""
        if ino == ROOT_INO:
            return "/"
        paths = self.paths_of(ino)
        return paths[0] if paths else None

    def paths_of(self, ino: int) -> list[str]:
        """Every path of ``ino`` (one per hard link), sorted; empty for an unlinked inode."""
        if ino == ROOT_INO:
            return ["/"]
        paths = []
        for parent, name in self.names_of(ino):
            above = self._directory_path(parent)
            if above is not None:
                paths.append(above.rstrip("/") + "/" + decode_name(name))
        return sorted(paths)

    def _directory_path(self, ino: int) -> str | None:
        """A directory's path: the walk up its one name per level, stopping at a cycle a damaged tree may have."""
        parts: list[bytes] = []
        seen = {ino}
        while ino != ROOT_INO:
            names = self.names_of(ino)
            if not names:
                return None
            ino, name = names[0]
            if ino in seen:
                return None
            seen.add(ino)
            parts.append(name)
        return "/" + "/".join(decode_name(part) for part in reversed(parts))

    def inodes_using(self, digest: bytes) -> list[int]:
        """The regular files whose committed content is ``digest``."""
        if self._users is None:
            users: dict[bytes, list[int]] = defaultdict(list)
            for node in self.inode_map().values():
                if stat.S_ISREG(node.mode) and node.content is not None:
                    users[node.content].append(node.ino)
            self._users = dict(users)
        return self._users.get(digest, [])

    def paths_using(self, digest: bytes) -> list[str]:
        """The path of every hard link of every file whose content is ``digest``, sorted."""
        return sorted(path for ino in self.inodes_using(digest) for path in self.paths_of(ino))

    def describe(self, ino: int) -> str:
        """An inode for a message: its path, or its number when no path leads to it."""
        path = self.path_of(ino)
        return f"{path} (inode {ino})" if path is not None else f"inode {ino} (no path)"
