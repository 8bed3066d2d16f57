"""A content's chunks, in order, gathered into the batches that ``Chunks.store`` records a transaction each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..catalog import Chunk, Extent
from ..pool.blobstore import Progress
from ..pool.codec import RAW

if TYPE_CHECKING:
    from .chunks import Chunks

LOOKUP_BYTES = 1 << 20  # content cut before its chunks are looked up in the catalog (one read transaction)
BATCH_BYTES = 64 << 20  # content recorded per write transaction: each dirties pages all over the chunk table


@dataclass
class Batch:
    """One batch of a content being stored: its runs, and the chunks stored for it, or to be."""

    runs: list[Extent]
    appended: dict[bytes, Chunk]  # chunks this batch stored (refcount 0 until recorded)
    staged: dict[bytes, Chunk] = field(default_factory=dict)  # raw chunks left where the staging file has them


class Gatherer:
    """Chunks in content order become batches: runs merged, new chunks looked up and appended as they come.

    Every ``LOOKUP_BYTES`` the chunks not seen yet in the batch are looked
    up in one read transaction and those the catalog lacks appended (then
    their bytes are let go); every ``BATCH_BYTES`` the batch goes to
    ``on_batch``, but for its last run, which may go on (so a hole stays one
    row) and opens the next batch. With ``stage_raw`` (a stream over a
    staging file), a new chunk that would be stored raw is not appended: it
    is left where it lies, in the batch's ``staged`` (``record_streamed``
    places it).
    """

    def __init__(self, chunks: Chunks, hold: set[int], on_batch: Callable[[Batch], None],
                 on_stored: Progress | None, *, stage_raw: bool = False) -> None:
        self._chunks = chunks
        self._hold = hold
        self._on_batch = on_batch
        self._on_stored = on_stored
        self._stage_raw = stage_raw
        self.staged_bytes = 0
        self._batch = Batch([], {})
        self._seen: set[bytes] = set()  # chunks of this batch looked up (found or appended) or waiting to be
        self._group: list[tuple[bytes, int, bytes | memoryview]] = []  # (digest, offset, bytes) not looked up yet
        self._grouped = self._batched = 0

    def add(self, offset: int, piece: bytes | memoryview, digest: bytes | None = None) -> None:
        """A chunk at ``offset``; ``digest``: its BLAKE3 when the caller knows it (a content of one chunk)."""
        chunk_digest = digest if digest is not None else self._chunks.digest(piece)
        self._extend(Extent(offset + len(piece), chunk_digest, len(piece)))
        if chunk_digest not in self._seen:
            self._seen.add(chunk_digest)
            self._group.append((chunk_digest, offset, piece))
        self._advance(len(piece))

    def add_known(self, run: Extent) -> None:
        """A run of a chunk the catalog holds (a base content's, before an edit): no bytes, no lookup.

        Should its row go before the batch is recorded, the batch reads it
        again where the run lies, as for any chunk that vanished.
        """
        self._extend(run)
        self._seen.add(run.chunk)
        self._advance(run.length * run.count)

    def _extend(self, run: Extent) -> None:
        runs = self._batch.runs
        if runs and runs[-1].chunk == run.chunk and runs[-1].end == run.start and runs[-1].length == run.length:
            last = runs[-1]
            runs[-1] = Extent(run.end, run.chunk, run.length, last.count + run.count)
        else:
            runs.append(run)

    def _advance(self, length: int) -> None:
        runs = self._batch.runs
        self._grouped += length
        if self._grouped >= LOOKUP_BYTES:
            self._look_up()
            if self._batched >= BATCH_BYTES and len(runs) > 1:
                carried = runs.pop()
                self._on_batch(self._batch)
                appended, staged = self._batch.appended.get(carried.chunk), self._batch.staged.get(carried.chunk)
                self._batch = Batch([carried], {carried.chunk: appended} if appended is not None else {},
                                    {carried.chunk: staged} if staged is not None else {})
                self._seen, self._batched = {carried.chunk}, 0

    def _look_up(self) -> None:
        if self._group:
            with self._chunks.catalog.read() as tx:
                lacking = [(d, offset, piece) for d, offset, piece in self._group if tx.chunk(d) is None]
            encoded = [self._chunks.encode(d, piece) for d, _, piece in lacking]
            if self._stage_raw:
                for (chunk, _), (_, offset, _) in zip(encoded, lacking, strict=True):
                    if chunk.codec == RAW:
                        chunk.offset = offset  # in the content, which is where the staging file has it
                        self._batch.staged[chunk.digest] = chunk
                        self.staged_bytes += chunk.length
                encoded = [(chunk, stored) for chunk, stored in encoded if chunk.digest not in self._batch.staged]
            for chunk in self._chunks.append_encoded(encoded, self._hold) if encoded else []:
                self._batch.appended[chunk.digest] = chunk
        if self._on_stored is not None and self._grouped:
            self._on_stored(self._grouped)
        self._batched += self._grouped
        self._group, self._grouped = [], 0

    def finish(self, *, empty: bool = False, last: Callable[[Batch], None] | None = None) -> None:
        """The last batch (``empty``: a content of no bytes, which still makes its pending row).

        ``last``, if given, takes it instead of ``on_batch``, even empty.
        """
        self._look_up()
        if self._batch.runs or empty or last is not None:
            (last or self._on_batch)(self._batch)
        self._batch = Batch([], {})
