"""Chunked contents: a content is an ordered list of chunks, each stored once, in packs.

A content (a resource, named by the BLAKE3 of all its bytes) is cut by
FastCDC into chunks, each named by the BLAKE3 of its own bytes. The catalog
lists a content's chunks as *extents* (runs of one chunk repeated, so that a
sparse file's holes cost one row), and each distinct chunk once, with a
refcount of its uses and its place: (pack, offset, stored length, codec).
Chunks are appended to the one open pack, compressed where that pays, and
the pack is sealed once it holds ``PACK_TARGET`` bytes.

Storing a content (``store``) runs under the caller's stripe lock of the
content's digest. It is cut and hashed as it is read; every ``LOOKUP_BYTES``
the new chunks are looked up in the catalog and those it lacks appended;
every ``BATCH_BYTES`` one transaction adds the batch's extents to the (still
pending) resource and takes its chunk references. So memory and the writer
lock's hold stay bounded whatever the size, and a crash leaves a pending
resource whose extents recovery releases. Batches are large because chunk
rows are keyed by digest: each transaction rewrites leaf pages all over that
table, and LMDB cannot reuse them until the next anchor.

The catalog decides every race: a batch's transaction takes a reference to
a chunk only if its row is still there, and records a chunk it appended only
if its pack is still there (a pack whose live bytes reach zero goes, and a
chunk thought present may lose its last use meanwhile); otherwise the batch
appends what vanished and tries again. A pack is deleted only after the
transaction that freed it is durable (``Content`` schedules it), and pack
ids are never reused, so a stale place gives ``PackMissing``, never another
chunk's bytes: a reader then looks the place up again. A store in flight
*holds* the packs it appended to until it has recorded those chunks (or
given up): a pack's live bytes count only what is recorded, so nothing
frees a held pack, however empty it looks.

Two callers skip work the content's bytes would otherwise cost. A file
written in order is cut and stored while it is written (``ChunkStream``, fed
by the writer's hashing thread), so its commit only records; when it is
large and mostly new raw chunks, its staging file becomes a pack as it
stands (``record_streamed``), so those bytes are written once. And an
in-place edit (``edits``) takes its base's chunks before and after what it
wrote as they are (``store``'s ``reuse``).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import blake3

from ..catalog import LAYOUT_CHUNKS, PENDING, Catalog, Chunk, Chunking, Pack, Resource, Txn, u64
from ..pool.blobstore import Progress
from ..pool.chunker import DEFAULT_PARAMS, ChunkParams, chunks
from ..pool.codec import DEFAULT_COMPRESSION, Compression, DamagedChunk, decode, encode
from ..pool.packs import PackMissing, PackStore
from ..pool.staging import ShortRead
from .chunk_reader import ChunkReader
from .gathering import LOOKUP_BYTES, Batch, Gatherer
from .reuse import Reuse, chunk_ends, take_prefix, take_runs

if TYPE_CHECKING:
    from .chunk_stream import ChunkStream

PACK_TARGET = 32 << 20  # a pack is sealed once it holds this many bytes
ADOPT_MIN = PACK_TARGET // 2  # a staging file becomes a pack from this size (smaller packs are compaction's)
ADOPT_SHARE = 7 / 8  # ... when at least this share of it is new raw chunks (the rest is dead bytes there)
ANCHOR_AFTER_RUNS = 1024  # a batch recording this many runs asks for an anchor, so its replaced pages are reused
VERIFIED_MAX = 1 << 20  # chunk digests remembered as verified before the memory is given back

log = logging.getLogger(__name__)

Finish = Callable[[Txn], None]  # a caller's work in the transaction that records a content's last batch


def chunking_params(chunking: Chunking) -> ChunkParams:
    return ChunkParams(chunking.min_size, chunking.avg_size, chunking.max_size)


DEFAULT_CHUNKING = Chunking(DEFAULT_PARAMS.min_size, DEFAULT_PARAMS.avg_size, DEFAULT_PARAMS.max_size)


class _Vanished(Exception):
    """A batch's transaction found chunks (or the packs of chunks it appended) gone: append them again."""

    def __init__(self, digests: set[bytes]) -> None:
        super().__init__(f"{len(digests)} chunks vanished")
        self.digests = digests


class Chunks:
    """The chunks and packs of one store: storing contents, releasing them, and reading them."""

    def __init__(self, catalog: Catalog, packs: PackStore, *, compression: Compression = DEFAULT_COMPRESSION,
                 covering: Callable[[], int] = lambda: 0) -> None:
        """``covering``: the number of the checkpoint that will cover a pack appended to now (``checkpoints``)."""
        self.catalog = catalog
        self.packs = packs
        self.compression = compression
        self.covering = covering
        self.params = DEFAULT_PARAMS
        self.on_freed: Callable[[Txn, bytes], None] = lambda tx, key: None  # ``Content`` deletes what is freed
        self._open: int | None = None  # the pack appends go to
        self._pack_lock = threading.Lock()
        self._held: Counter[int] = Counter()  # pack -> stores in flight whose appends to it are not recorded yet
        self._held_lock = threading.Lock()  # taken last, under any other lock
        self._verified: set[bytes] = set()
        self._zero_digests: dict[int, bytes] = {}

    # -- the store's life ------------------------------------------------------------

    def settle(self) -> None:
        """At open, before anything is stored: seal the packs a previous process left open, drop foreign files.

        A pack file the catalog does not know is debris (its pack's row is
        written before the file is made, and deleted before the file is).
        """
        with self.catalog.write() as tx:
            chunking = tx.chunking()
            if chunking is None:
                tx.set_chunking(DEFAULT_CHUNKING)
                chunking = DEFAULT_CHUNKING
            unsealed = [pack for pack in tx.packs() if not pack.sealed]
            known = {pack.pack for pack in tx.packs()}
            for pack in [pack for pack in tx.packs() if pack.sealed and pack.live == 0]:
                self.free_pack(tx, pack.pack)  # rolled over with appends no batch recorded (see ``_roll``)
        self.params = chunking_params(chunking)
        for pack in unsealed:
            self._seal(pack.pack, free_if_empty=True)
        for pack_id in list(self.packs.packs()):
            if pack_id not in known:
                log.info("recovery: deleted pack %016x, which the catalog does not know", pack_id)
                self.packs.delete(pack_id)

    def close(self) -> None:
        """Seal the open pack: the next process starts a pack of its own."""
        with self._pack_lock:
            if self._open is not None:
                self._seal(self._open, free_if_empty=True)
                self._open = None

    def _seal(self, pack_id: int, *, free_if_empty: bool) -> None:
        """No more appends to the pack. ``free_if_empty`` only when no store is in flight: a rollover
        seals a pack whose last appends the batches that made them have not recorded yet."""
        try:
            end = self.packs.end(pack_id)
            self.packs.seal(pack_id)
        except PackMissing:  # its row was written, its file never made (or a power loss took its name)
            end = 0
        with self.catalog.write() as tx:
            pack = tx.pack(pack_id)
            if pack is not None:
                pack.sealed, pack.size = True, end
                tx.save_pack(pack)
                if free_if_empty and pack.live == 0:
                    self.free_pack(tx, pack_id)

    def held(self, pack_id: int) -> bool:
        """Whether a store in flight appended to the pack and has not recorded it all: nothing may free it.

        Its live bytes say only what is recorded, so it may look empty; a
        sealed pack left with nothing live once let go is compaction's.
        """
        with self._held_lock:
            return self._held[pack_id] > 0

    def _hold(self, hold: set[int], pack_id: int) -> None:
        """A store in flight (whose packs are ``hold``) appended to the pack: see ``held``."""
        if pack_id not in hold:
            hold.add(pack_id)
            with self._held_lock:
                self._held[pack_id] += 1

    def let_go(self, hold: set[int]) -> None:
        """A store in flight recorded (or gave up) its appends to these packs."""
        with self._held_lock:
            for pack_id in hold:
                self._held[pack_id] -= 1
                if self._held[pack_id] <= 0:
                    del self._held[pack_id]
            hold.clear()

    def free_pack(self, tx: Txn, pack_id: int) -> bool:
        """The pack holds nothing live: its row goes now, its file once that is durable (``Content`` does it).

        False, and nothing done, while a store in flight holds it (``held``).
        """
        if self.held(pack_id):
            return False
        tx.delete_pack(pack_id)
        tx.add_freed(u64(pack_id))
        self.on_freed(tx, u64(pack_id))
        return True

    def delete_pack_unless_known(self, pack_id: int) -> bool:
        """Delete a freed pack's file unless the catalog holds the pack again (it never does: ids are not reused)."""
        with self.catalog.read() as tx:
            if tx.pack(pack_id) is not None:
                return False
        self.packs.delete(pack_id)
        return True

    # -- storing ---------------------------------------------------------------------------

    def store(self, digest: bytes, size: int, read: Callable[[int, int], bytes],
              on_stored: Progress | None = None, reuse: Reuse | None = None, finish: Finish | None = None) -> None:
        """Record the extents of the content ``digest`` of ``size`` bytes, which ``read(length, offset)`` reads.

        The caller holds the digest's stripe lock and completes the resource
        afterwards; on failure it calls ``drop_partial``. ``on_stored(n)``
        every ``LOOKUP_BYTES`` (it may raise to stop). A complete resource of a
        whole-file blob keeps its layout (``upgrade`` switches it).

        ``reuse`` (an in-place edit): the base's chunks before the written
        bytes are taken as they are and the cutting starts there; past them,
        once a cut ends where a base chunk ends, the base's are taken again
        (``reuse`` tells why that gives the chunks of a cut from 0).

        ``finish(tx)``, if given, runs in the transaction that records the
        last batch, which defers its callbacks to the caller: a commit there
        saves a small file a transaction of its own.
        """
        self._release_prefix(digest)
        hold: set[int] = set()
        try:
            gatherer = Gatherer(self, hold, lambda batch: self._record_batch(digest, size, batch, read, hold),
                                 on_stored)
            base = self._chunked_length(reuse.base) if reuse is not None else None
            if reuse is None or base is None:
                self._cut(gatherer, read, 0, size, whole=digest)
            else:
                limit = reuse.last_end(base, size)
                start = take_prefix(self.catalog, gatherer, reuse.base, min(reuse.start, limit))
                self._cut(gatherer, read, start, size, (reuse.base, reuse.end, limit))
            gatherer.finish(empty=size == 0, last=None if finish is None else
                            lambda batch: self._record_batch(digest, size, batch, read, hold, finish))
        finally:
            self.let_go(hold)

    def _chunked_length(self, digest: bytes) -> int | None:
        """The length of a complete chunked content, or None."""
        with self.catalog.read() as tx:
            resource = tx.resource(digest)
        if resource is None or not resource.complete or resource.layout != LAYOUT_CHUNKS:
            return None
        return resource.length

    def _cut(self, gatherer: Gatherer, read: Callable[[int, int], bytes], start: int, size: int,
             resync: tuple[bytes, int, int] | None = None, whole: bytes | None = None) -> None:
        """Cut and gather ``[start, size)``; with ``resync`` = (base, after, limit), take the base's chunks
        from the first cut past ``after`` that ends where a base chunk ends. ``whole``: the content's
        digest, which is its chunk's when it is one chunk (a small file's is hashed once, not twice)."""
        ends = chunk_ends(self.catalog, *resync) if resync is not None else iter(())
        base_end = next(ends, None)
        for offset, piece in chunks(read, start, size, self.params):
            gatherer.add(offset, piece, whole if len(piece) == size else None)
            end = offset + len(piece)
            while base_end is not None and base_end < end:
                base_end = next(ends, None)
            if base_end is not None and base_end == end and resync is not None:
                resumed = take_runs(self.catalog, gatherer, resync[0], end, resync[2])
                if resumed < size:
                    self._cut(gatherer, read, resumed, size)
                return

    def record_streamed(self, digest: bytes, size: int, streamed: "ChunkStream",
                        read: Callable[[int, int], bytes], on_stored: Progress | None = None,
                        adopt: Callable[[int], None] | None = None, finish: Finish | None = None) -> None:
        """``store``, for a content a finished stream cut and stored already: its batches are recorded.

        The stream left its new raw chunks in the staging file (``staged``):
        ``adopt(pack)``, if given, makes the staging file that pack, and the
        chunks stay where they are, when the file is large and mostly such
        chunks. Otherwise they are read back and appended to the open pack.
        ``finish``: as ``store``'s.
        """
        self._release_prefix(digest)
        pack = self._adopt(size, streamed, adopt) if adopt is not None else None
        batches = streamed.batches()
        batch = next(batches, None)
        if batch is None and (size == 0 or finish is not None):
            batch = Batch([], {})
        while batch is not None:
            following = next(batches, None)
            if on_stored is not None:  # before the batch: nothing may raise once ``finish`` committed
                on_stored(batch.runs[-1].end - batch.runs[0].start if batch.runs else 0)
            self._place_staged(batch, pack, read, streamed.hold)
            self._record_batch(digest, size, batch, read, streamed.hold, finish if following is None else None)
            batch = following

    def _adopt(self, size: int, streamed: "ChunkStream", adopt: Callable[[int], None]) -> int | None:
        """The pack the staging file became, or None (too small, too little of it new, or it could not be).

        Its row comes first, sealed and held: should the process end before
        a batch records a chunk there, the next open frees it (``settle``).
        """
        if size < ADOPT_MIN or streamed.staged_bytes < size * ADOPT_SHARE:
            return None
        with self.catalog.write() as tx:
            pack_id = tx.new_pack_id()
            tx.save_pack(Pack(pack_id, size=size, sealed=True))
        self._hold(streamed.hold, pack_id)
        try:
            adopt(pack_id)
        except OSError as exc:
            log.warning("the staging file of a %d-byte content could not become pack %016x (%s); its chunks "
                        "are appended instead", size, pack_id, exc)
            with self.catalog.write() as tx:
                tx.delete_pack(pack_id)
            return None
        return pack_id

    def _place_staged(self, batch: Batch, pack: int | None, read: Callable[[int, int], bytes],
                      hold: set[int]) -> None:
        """The batch's staged chunks get their places: in the adopted ``pack``, or appended from ``read``."""
        if pack is not None:
            for chunk_digest, at in batch.staged.items():
                batch.appended[chunk_digest] = Chunk(chunk_digest, pack, at.offset, at.stored, at.length, at.codec)
        else:
            group: list[tuple[Chunk, bytes | memoryview]] = []
            grouped = 0
            for at in sorted(batch.staged.values(), key=lambda chunk: chunk.offset):
                group.append((at, read(at.length, at.offset)))
                grouped += at.length
                if grouped >= LOOKUP_BYTES:
                    batch.appended.update((chunk.digest, chunk) for chunk in self.append_encoded(group, hold))
                    group, grouped = [], 0
            batch.appended.update((chunk.digest, chunk) for chunk in self.append_encoded(group, hold) if group)
        batch.staged = {}

    def _release_prefix(self, digest: bytes) -> None:
        """The extents a store cut short left to a still pending content go, before this store takes them again.

        Recovery commits a kept staging file whose content may be such a
        prefix: its batches write the same extent keys, and would count the
        chunk uses a second time.
        """
        with self.catalog.read() as tx:
            resource = tx.resource(digest)
            partial = resource is not None and not resource.complete and next(tx.extents(digest), None) is not None
        if partial:
            with self.catalog.write() as tx:
                resource = tx.resource(digest)
                if resource is not None and not resource.complete:
                    self.release(tx, digest)

    def digest(self, piece: bytes | memoryview) -> bytes:
        """The BLAKE3 of a chunk (a chunk of zeros of a length seen before costs a scan, not a hash)."""
        # The end bytes first (cheap); a compare with zeros beats counting them tenfold.
        zeros = len(piece) > 0 and piece[0] == 0 == piece[-1] and bytes(piece) == bytes(len(piece))
        zero = self._zero_digests.get(len(piece)) if zeros else None
        if zero is not None:
            return zero
        digest = blake3.blake3(piece).digest()
        if zeros and len(self._zero_digests) < 64:
            self._zero_digests[len(piece)] = digest
        return digest

    def _record_batch(self, digest: bytes, size: int, batch: Batch, read: Callable[[int, int], bytes],
                      hold: set[int], finish: Finish | None = None) -> None:
        """One transaction for the batch; chunks that vanished meanwhile are read again and appended."""
        while True:
            try:
                with self.catalog.write(defer_callbacks=finish is not None) as tx:
                    self._record(tx, digest, size, batch)
                    if finish is not None:
                        finish(tx)
                if len(batch.runs) >= ANCHOR_AFTER_RUNS:
                    self.catalog.anchor_soon()
                return
            except _Vanished as vanished:
                for chunk_digest in vanished.digests:
                    run = next(run for run in batch.runs if run.chunk == chunk_digest)
                    batch.appended[chunk_digest] = self.append(chunk_digest, read(run.length, run.start), hold)

    def append(self, chunk_digest: bytes, piece: bytes | memoryview, hold: set[int] | None) -> Chunk:
        """Encode and append a chunk; ``hold`` (of a store in flight) keeps its pack from being freed (``held``)."""
        return self.append_encoded([self.encode(chunk_digest, piece)], hold)[0]

    def encode(self, chunk_digest: bytes, piece: bytes | memoryview) -> tuple[Chunk, bytes | memoryview]:
        """A chunk as it would be stored (placed nowhere yet), and its stored bytes."""
        codec, stored = encode(piece, self.compression)
        return Chunk(chunk_digest, 0, 0, len(stored), len(piece), codec), stored

    def append_encoded(self, encoded: list[tuple[Chunk, bytes | memoryview]], hold: set[int] | None) -> list[Chunk]:
        """Append encoded chunks (``encode``) to one pack with one write: their places, in order."""
        return self._append_encoded(encoded, roll=True, hold=hold) or []

    def append_stored(self, chunk: Chunk, stored: bytes, *, roll: bool = True,
                      hold: set[int] | None = None) -> Chunk | None:
        """Append a chunk's stored bytes as they are (its codec stays) to the open pack; the chunk at that place.

        The open pack rolls over as ``store``'s appends make it; with
        ``roll=False`` a full (or no) open pack gives None instead, so that a
        caller can record what it appended there while the pack is open (a
        sealed pack is freed when its recorded live bytes reach zero, with
        what was appended but not recorded). Compaction moves the chunk
        there once the bytes are durable.
        """
        appended = self._append_encoded([(chunk, stored)], roll=roll, hold=hold)
        return appended[0] if appended else None

    def _append_encoded(self, encoded: list[tuple[Chunk, bytes | memoryview]], *, roll: bool,
                        hold: set[int] | None) -> list[Chunk] | None:
        """One write of stored chunks to the open pack (one syscall for many: they are small)."""
        with self._pack_lock:
            if self._open is None or self.packs.end(self._open) >= PACK_TARGET:
                if not roll:
                    return None
                self._roll()
            assert self._open is not None
            offset = self.packs.append(self._open, b"".join(stored for _, stored in encoded))
            if hold is not None:
                self._hold(hold, self._open)
            placed = []
            for chunk, stored in encoded:
                placed.append(Chunk(chunk.digest, self._open, offset, len(stored), chunk.length, chunk.codec))
                offset += len(stored)
            return placed

    def _roll(self) -> None:
        """Seal the open pack (if any) and open a new one: its row first, then its file.

        The sealed pack is not freed even with nothing live: batches whose
        appends went there may not have recorded them yet, and freeing it
        would make them append again, forever once a batch's chunks outgrow
        a pack. One that stays at zero is freed at the next open (``settle``).
        """
        if self._open is not None:
            self._seal(self._open, free_if_empty=False)
            self._open = None
        with self.catalog.write() as tx:
            pack_id = tx.new_pack_id()
            tx.save_pack(Pack(pack_id))
        self.packs.create(pack_id)
        self._open = pack_id

    def _record(self, tx: Txn, digest: bytes, size: int, batch: Batch) -> None:
        resource = tx.resource(digest)
        if resource is None:
            resource = Resource(digest, size, 0, PENDING, LAYOUT_CHUNKS)
            tx.save_resource(resource)
        else:
            assert not (resource.complete and resource.layout == LAYOUT_CHUNKS), \
                f"extents added to the complete content {digest.hex()}"
            if resource.layout != LAYOUT_CHUNKS and not resource.complete:
                resource.layout = LAYOUT_CHUNKS  # a complete whole-file blob being upgraded stays one until switched
                tx.save_resource(resource)
        uses: dict[bytes, int] = {}
        for run in batch.runs:
            uses[run.chunk] = uses.get(run.chunk, 0) + run.count
        vanished: set[bytes] = set()
        changed: dict[int, Pack] = {}
        for chunk_digest, count in uses.items():  # a transaction that raises _Vanished writes nothing
            chunk = tx.chunk(chunk_digest)
            if chunk is not None:
                chunk.refcount += count
                tx.save_chunk(chunk)
                continue
            appended = batch.appended.get(chunk_digest)
            if appended is None or self.pack_of(tx, appended.pack, changed) is None:
                vanished.add(chunk_digest)
                continue
            changed[appended.pack].live += appended.stored
            tx.add_chunk(Chunk(chunk_digest, appended.pack, appended.offset, appended.stored, appended.length,
                               appended.codec, count))
        if vanished:
            raise _Vanished(vanished)
        for pack in changed.values():
            tx.save_pack(pack)
            if not self.packs.promises.durable_on_put:
                tx.add_unsynced(u64(pack.pack), self.covering())
        tx.add_extents(digest, batch.runs)

    @staticmethod
    def pack_of(tx: Txn, pack_id: int, changed: dict[int, Pack]) -> Pack | None:
        """The pack's row, read once per transaction into ``changed`` (its caller saves them all), or None."""
        if pack_id not in changed:
            pack = tx.pack(pack_id)
            if pack is None:
                return None
            changed[pack_id] = pack
        return changed[pack_id]

    # -- releasing -----------------------------------------------------------------------

    def release(self, tx: Txn, digest: bytes) -> None:
        """Drop the extents of a content (complete, or partly stored) and the chunk uses they held."""
        changed: dict[int, Pack] = {}
        for extent in tx.delete_extents(digest):
            chunk = tx.chunk(extent.chunk)
            if chunk is None:
                log.error("the content %s names the chunk %s, which the catalog lacks (fusestore fsck)",
                          digest.hex(), extent.chunk.hex())
                continue
            chunk.refcount -= extent.count
            if chunk.refcount > 0:
                tx.save_chunk(chunk)
                continue
            tx.delete_chunk(chunk)
            pack = self.pack_of(tx, chunk.pack, changed)
            if pack is not None:
                pack.live -= chunk.stored
        for pack in changed.values():
            if not (pack.sealed and pack.live <= 0 and self.free_pack(tx, pack.pack)):
                tx.save_pack(pack)

    def drop_partial(self, digest: bytes) -> None:
        """A store that failed: the extents it added to a still pending content go (under the stripe lock)."""
        with self.catalog.write() as tx:
            resource = tx.resource(digest)
            if resource is not None and not resource.complete:
                self.release(tx, digest)
                if resource.refcount <= 0:  # made by the store that failed: no reservation holds it
                    tx.delete_resource(digest)

    # -- reading -----------------------------------------------------------------------------

    def open(self, digest: bytes, size: int, *, verify: bool,
             on_damage: Callable[[str], None]) -> ChunkReader:
        """A reader of a complete chunked content; ``verify``: hash each chunk the first time this process reads it.

        ``on_damage(what)`` is called (and must raise) for a chunk that is
        missing or does not decode or hash to its name.
        """
        return ChunkReader(self, digest, size, verify, on_damage)

    def load(self, chunk: Chunk) -> bytes:
        """The decoded bytes of a chunk at its place (PackMissing, ShortRead, DamagedChunk as they come)."""
        return decode(chunk.codec, self.packs.read(chunk.pack, chunk.offset, chunk.stored), chunk.length)

    def check(self, chunk: Chunk, data: bytes) -> bool:
        """Whether ``data`` hashes to the chunk's name (remembered, within a bound, once it does)."""
        if chunk.digest in self._verified:
            return True
        if self.digest(data) != chunk.digest:
            return False
        if len(self._verified) >= VERIFIED_MAX:
            self._verified.clear()
        self._verified.add(chunk.digest)
        return True

    def intact(self, chunk: Chunk) -> bool:
        """Whether the chunk's stored bytes are there and decode to bytes of its name (recovery, fsck)."""
        try:
            data = self.load(chunk)
        except (PackMissing, ShortRead, DamagedChunk):
            return False
        return blake3.blake3(data).digest() == chunk.digest

    def replace_lost(self, read: Callable[[int, int], bytes], size: int, lost: set[bytes]) -> set[bytes]:
        """Store again, from a copy of a content, those of its chunks whose bytes were lost; which it replaced."""
        replaced: set[bytes] = set()
        for _, piece in chunks(read, 0, size, self.params):
            chunk_digest = self.digest(piece)
            if chunk_digest not in lost or chunk_digest in replaced:
                continue
            fresh = self.append(chunk_digest, piece, None)
            with self.catalog.write() as tx:
                chunk = tx.chunk(chunk_digest)
                pack = tx.pack(fresh.pack)
                if chunk is None or pack is None:
                    continue
                old = tx.pack(chunk.pack)
                if old is not None:
                    old.live -= chunk.stored
                    if not (old.sealed and old.live <= 0 and self.free_pack(tx, old.pack)):
                        tx.save_pack(old)
                tx.move_chunk(chunk, fresh.pack, fresh.offset, fresh.stored, fresh.codec)
                pack.live += fresh.stored
                tx.save_pack(pack)
                tx.add_unsynced(u64(fresh.pack), self.covering())
            replaced.add(chunk_digest)
        return replaced
