"""Storing a content as it is written, before its digest is known: ``ChunkStream``."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from ..catalog import Chunk, Extent
from ..pool import StagingFile
from ..pool.chunker import StreamChunker
from .chunks import Chunks
from .gathering import Batch, Gatherer

# A spilled run: end, chunk, length, count; then its chunk's place: kind, pack, offset, stored, codec.
_RUN = struct.Struct(">Q32sIQBQQIB")
_KNOWN, _APPENDED, _STAGED = 0, 1, 2  # the place a run's first record carries: none, in a pack, in the staging file
_BATCH_HEAD = struct.Struct(">I")  # runs in the batch that follows


class ChunkStream:
    """A content stored as it is written, in order from offset 0, before its digest is known.

    The writer's hashing thread feeds it (``feed``): the chunks are cut,
    hashed, looked up and the new ones appended as they come, so that a
    large sequential write has little left to do at its commit. New chunks
    stored raw are not appended: they stay where the staging file has them
    (``staged_bytes`` of them), and the commit makes the staging file a pack
    or appends them (``Chunks.record_streamed``). Its batches
    cannot be recorded yet (extents are keyed by the content's digest), so
    they are spilled, a fixed-size record per run, to a staging file that no
    record names (recovery deletes it after a crash; the chunks appended are
    dead bytes then): memory stays flat whatever the size. At the commit
    ``Chunks.record_streamed`` records them. A stream abandoned (writes out
    of order, a truncation) leaves its appended chunks as dead bytes.
    """

    def __init__(self, chunks: Chunks, spill: Callable[[], StagingFile]) -> None:
        self._chunks = chunks
        self._new_spill = spill
        self._spill: StagingFile | None = None
        self._spilled = 0
        self._cutter = StreamChunker(chunks.params)
        self.hold: set[int] = set()  # the packs its appends went to, held until it is closed
        self._gatherer = Gatherer(chunks, self.hold, self._spill_batch, None, stage_raw=True)
        self.fed = 0

    @property
    def staged_bytes(self) -> int:
        return self._gatherer.staged_bytes

    def feed(self, data: bytes) -> None:
        for offset, piece in self._cutter.feed(data):
            self._gatherer.add(offset, piece)
        self.fed += len(data)

    def finish(self) -> None:
        for offset, piece in self._cutter.finish():
            self._gatherer.add(offset, piece)
        self._gatherer.finish()

    def _spill_batch(self, batch: Batch) -> None:
        if self._spill is None:
            self._spill = self._new_spill()
        records = [_BATCH_HEAD.pack(len(batch.runs))]
        for run in batch.runs:
            chunk = batch.appended.pop(run.chunk, None)  # the first run of a chunk carries its place
            kind = _APPENDED if chunk is not None else _KNOWN
            if chunk is None and (chunk := batch.staged.pop(run.chunk, None)) is not None:
                kind = _STAGED
            records.append(_RUN.pack(run.end, run.chunk, run.length, run.count, kind,
                                     *((chunk.pack, chunk.offset, chunk.stored, chunk.codec) if chunk else (0,) * 4)))
        data = b"".join(records)
        self._spill.write(data, self._spilled)
        self._spilled += len(data)

    def batches(self) -> Iterator[Batch]:
        """The finished stream's batches, in order, read back from the spill."""
        offset = 0
        while self._spill is not None and offset < self._spilled:
            (count,) = _BATCH_HEAD.unpack(self._spill.read(_BATCH_HEAD.size, offset))
            offset += _BATCH_HEAD.size
            raw = self._spill.read(count * _RUN.size, offset)
            offset += len(raw)
            batch = Batch([], {})
            for end, chunk_digest, length, repeat, kind, pack, at, stored, codec in _RUN.iter_unpack(raw):
                batch.runs.append(Extent(end, chunk_digest, length, repeat))
                if kind != _KNOWN:
                    places = batch.appended if kind == _APPENDED else batch.staged
                    places[chunk_digest] = Chunk(chunk_digest, pack, at, stored, length, codec)
            yield batch

    def close(self) -> None:
        """The spill goes, and the hold on the packs (the stream was recorded, or abandoned)."""
        self._chunks.let_go(self.hold)
        if self._spill is not None:
            self._spill.area.discard(self._spill)
            self._spill = None
