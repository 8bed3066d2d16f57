"""A catalog transaction: typed accessors for every record kind (``records`` holds their encodings)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import lmdb

from .. import errors
from .records import (
    COMPLETE,
    LOST,
    ROOT_INO,
    U64,
    Chunk,
    Chunking,
    Extent,
    Inode,
    Pack,
    Resource,
    StagingRecord,
    Synced,
    u64,
)

if TYPE_CHECKING:
    from .catalog import Catalog


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

    def store_id(self) -> bytes | None:
        """The 16 random bytes that name this store (absent in a store made before them, until a writable open)."""
        return self.meta_get(b"store_id")

    def set_store_id(self, store_id: bytes) -> None:
        self.meta_put(b"store_id", store_id)

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

    def remove(self, digest: bytes) -> Resource | None:
        """Drop one reference; the resource when that was the last and its row is gone, else None."""
        res = self.resource(digest)
        if res is None:
            raise unknown_resource(digest)
        res.refcount -= 1
        if res.refcount <= 0:
            self.delete_resource(digest)
            return res
        self.save_resource(res)
        return None

    def delete_resource(self, digest: bytes) -> None:
        """The resource's row goes, whatever its refcount (its blob is the caller's to delete)."""
        self.raw.delete(digest, db=self.catalog.resources)
        self.raw.delete(digest, db=self.catalog.unsynced)

    def resources(self) -> Iterator[Resource]:
        with self.raw.cursor(db=self.catalog.resources) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield Resource.decode(bytes(key), raw)

    # -- chunks, extents and packs ---------------------------------------------

    def chunking(self) -> Chunking | None:
        raw = self.meta_get(b"chunking")
        return Chunking.decode(raw) if raw is not None else None

    def set_chunking(self, chunking: Chunking) -> None:
        self.meta_put(b"chunking", chunking.encode())

    def chunk(self, digest: bytes) -> Chunk | None:
        if self.catalog.chunks is None:
            return None
        raw = self._get(digest, self.catalog.chunks)
        return Chunk.decode(digest, raw) if raw is not None else None

    def add_chunk(self, chunk: Chunk) -> None:
        """A new chunk row, and its pack's index row."""
        self.save_chunk(chunk)
        self.raw.put(u64(chunk.pack) + u64(chunk.offset), chunk.digest, db=self._table(self.catalog.packchunks))

    def save_chunk(self, chunk: Chunk) -> None:
        """Another refcount for a chunk in place (``add_chunk`` and ``move_chunk`` change its place)."""
        self.raw.put(chunk.digest, chunk.encode(), db=self._table(self.catalog.chunks))

    def move_chunk(self, chunk: Chunk, pack: int, offset: int, stored: int, codec: int) -> None:
        """The chunk's bytes are now at ``offset`` in ``pack`` (compaction, or a copy that replaces lost bytes)."""
        self.raw.delete(u64(chunk.pack) + u64(chunk.offset), db=self._table(self.catalog.packchunks))
        chunk.pack, chunk.offset, chunk.stored, chunk.codec = pack, offset, stored, codec
        self.add_chunk(chunk)

    def delete_chunk(self, chunk: Chunk) -> None:
        self.raw.delete(chunk.digest, db=self._table(self.catalog.chunks))
        self.raw.delete(u64(chunk.pack) + u64(chunk.offset), db=self._table(self.catalog.packchunks))

    def delete_index_row(self, pack: int, offset: int) -> None:
        """One row of the index of chunks by place, whatever it names (``fsck --repair`` drops stray ones)."""
        self.raw.delete(u64(pack) + u64(offset), db=self._table(self.catalog.packchunks))

    def chunks(self) -> Iterator[Chunk]:
        if self.catalog.chunks is None:
            return
        with self.raw.cursor(db=self.catalog.chunks) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield Chunk.decode(bytes(key), raw)

    def chunks_in_pack(self, pack: int) -> Iterator[bytes]:
        """The digests of the chunks located in ``pack``, in offset order."""
        prefix = u64(pack)
        if self.catalog.packchunks is None:
            return
        with self.raw.cursor(db=self.catalog.packchunks) as cur:
            if not cur.set_range(prefix):
                return
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                if not key.startswith(prefix):
                    return
                yield bytes(raw)

    def pack_index(self) -> Iterator[tuple[int, int, bytes]]:
        """Every pack index row as (pack, offset, chunk digest) (inspection)."""
        if self.catalog.packchunks is None:
            return
        with self.raw.cursor(db=self.catalog.packchunks) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                pack, offset = U64.unpack_from(key)[0], U64.unpack_from(key, 8)[0]
                yield pack, offset, bytes(raw)

    def add_extents(self, digest: bytes, extents: list[Extent]) -> None:
        for extent in extents:
            self.raw.put(digest + u64(extent.end), extent.encode(), db=self._table(self.catalog.extents))

    def extents(self, digest: bytes, offset: int = 0) -> Iterator[Extent]:
        """The extents of a content in order, from the one holding byte ``offset``."""
        if self.catalog.extents is None:
            return
        with self.raw.cursor(db=self.catalog.extents) as cur:
            if not cur.set_range(digest + u64(offset + 1)):  # the first extent ending past ``offset``
                return
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                if key[:32] != digest:
                    return
                yield Extent.decode(U64.unpack_from(key, 32)[0], raw)

    def delete_extents(self, digest: bytes) -> list[Extent]:
        """The content's extents, which are deleted."""
        extents = list(self.extents(digest))
        for extent in extents:
            self.raw.delete(digest + u64(extent.end), db=self._table(self.catalog.extents))
        return extents

    def all_extents(self) -> Iterator[tuple[bytes, Extent]]:
        """Every extent as (content digest, extent) (inspection)."""
        if self.catalog.extents is None:
            return
        with self.raw.cursor(db=self.catalog.extents) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield bytes(key[:32]), Extent.decode(U64.unpack_from(key, 32)[0], raw)

    def new_pack_id(self) -> int:
        raw = self.meta_get(b"next_pack")
        pack = U64.unpack(raw)[0] if raw else 1
        self.meta_put(b"next_pack", u64(pack + 1))
        return pack

    def pack(self, pack: int) -> Pack | None:
        if self.catalog.packs is None:
            return None
        raw = self._get(u64(pack), self.catalog.packs)
        return Pack.decode(pack, raw) if raw is not None else None

    def save_pack(self, pack: Pack) -> None:
        self.raw.put(u64(pack.pack), pack.encode(), db=self._table(self.catalog.packs))

    def delete_pack(self, pack: int) -> None:
        self.raw.delete(u64(pack), db=self._table(self.catalog.packs))

    def packs(self) -> Iterator[Pack]:
        if self.catalog.packs is None:
            return
        with self.raw.cursor(db=self.catalog.packs) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield Pack.decode(U64.unpack(key)[0], raw)

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

    # -- packs (and, in older stores, blobs) written since the last checkpoint ---------
    # A key is a pack's u64 id (8 bytes) or a whole-file blob's digest (32 bytes, left by format 2).

    def add_unsynced(self, key: bytes, checkpoint: int) -> None:
        self.raw.put(key, u64(checkpoint), db=self.catalog.unsynced)

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

    # -- packs (or whole-file blobs) freed since the last checkpoint; keys as ``unsynced``'s --

    def add_freed(self, key: bytes) -> None:
        self.raw.put(key, b"", db=self.catalog.freed)

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

    @staticmethod
    def _table(db: "lmdb._Database | None") -> "lmdb._Database":
        assert db is not None, "only a read-only catalog of an older format lacks it"
        return db

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

    def staging_records(self) -> Iterator[StagingRecord]:
        with self.raw.cursor(db=self.catalog.staging) as cur:
            for key, raw in cast("Iterator[tuple[bytes, bytes]]", cur):
                yield StagingRecord.decode(bytes(key), raw)


def unknown_resource(digest: bytes) -> errors.NotFound:
    """The error for content the catalog does not hold: one message, so that a refusal can look the same."""
    return errors.NotFound(f"no resource {digest.hex()}")
