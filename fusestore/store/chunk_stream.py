"""Storing a content as it is written, before its digest is known: ``ChunkStream``."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from ..catalog import Chunk, Extent
from ..pool import StagingFile
from ..pool.chunker import StreamChunker
from .chunks import Batch, Chunks, Gatherer

_RUN = struct.Struct(">Q32sIQ?QQIB")  # a spilled run: end, chunk, length, count; appended?, pack, offset, stored, codec
_BATCH_HEAD = struct.Struct(">I")  # runs in the batch that follows


class ChunkStream:
    """A content stored as it is written, in order from offset 0, before its digest is known.

    The writer's hashing thread feeds it (``feed``): the chunks are cut,
    hashed, looked up and the new ones appended as they come, so that a
    large sequential write has little left to do at its commit. Its batches
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
        self._gatherer = Gatherer(chunks, self.hold, self._spill_batch, None)
        self.fed = 0

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
            chunk = batch.appended.pop(run.chunk, None)  # the first run of a chunk carries where it was appended
            records.append(_RUN.pack(run.end, run.chunk, run.length, run.count, chunk is not None,
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
            for end, chunk_digest, length, repeat, appended, pack, at, stored, codec in _RUN.iter_unpack(raw):
                batch.runs.append(Extent(end, chunk_digest, length, repeat))
                if appended:
                    batch.appended[chunk_digest] = Chunk(chunk_digest, pack, at, stored, length, codec)
            yield batch

    def close(self) -> None:
        """The spill goes, and the hold on the packs (the stream was recorded, or abandoned)."""
        self._chunks.let_go(self.hold)
        if self._spill is not None:
            self._spill.area.discard(self._spill)
            self._spill = None
