"""Reading a chunked content: ``ChunkReader``, what ``Chunks.open`` gives.

It looks up ``WINDOW`` extents at a time (with their chunk rows, in one read
transaction) and keeps the last chunk it decoded, so a sequential reader
costs one lookup per window and one pack read per chunk; raw chunks that lie
back to back in one pack (fresh content is appended in order) are read
``SPAN_BYTES`` at a time. A chunk is hashed against its name the first time
this process reads it, when the reader was opened to verify; a pack found
gone (compaction moved the chunk) is looked up once more.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import blake3

from .. import errors
from ..catalog import Chunk, Extent
from ..pool import StagingFile
from ..pool.blobstore import Progress
from ..pool.codec import RAW, DamagedChunk
from ..pool.packs import PackMissing
from ..pool.staging import ShortRead

if TYPE_CHECKING:
    from .chunks import Chunks

WINDOW = 64  # extents a reader looks up at once
SPAN_BYTES = 1 << 20  # at most this much of raw chunks back to back in one pack is read at once


class ChunkReader:
    """Random access to a chunked content: the extents near the last read, and the last chunk, are kept."""

    def __init__(self, chunks: Chunks, digest: bytes, size: int, verify: bool,
                 on_damage: Callable[[str], None]) -> None:
        self._chunks = chunks
        self.digest = digest
        self.size = size
        self._verify = verify
        self._on_damage = on_damage
        self._window: list[tuple[Extent, Chunk]] = []
        self._ends: list[int] = []
        self._cached: tuple[int, bytes] | None = None  # (start in the content, decoded bytes) of the last chunk

    def pread(self, length: int, offset: int) -> bytes:
        parts: list[bytes] = []
        end = min(self.size, offset + length)
        while offset < end:
            start, data = self._chunk_at(offset)
            part = data[offset - start:end - start]
            parts.append(part)
            offset += len(part)
        return b"".join(parts)

    def _chunk_at(self, offset: int) -> tuple[int, bytes]:
        if self._cached is not None and self._cached[0] <= offset < self._cached[0] + len(self._cached[1]):
            return self._cached
        for attempt in range(2):
            index = self._locate(offset, refresh=attempt > 0)
            extent, chunk = self._window[index]
            start = extent.start + (offset - extent.start) // extent.length * extent.length
            span = self._raw_span(index) if extent.count == 1 else [chunk]
            try:
                if len(span) > 1:
                    stored = self._chunks.packs.read(chunk.pack, chunk.offset, sum(c.stored for c in span))
                    if self._verify:
                        at = 0
                        for piece in span:
                            if not self._chunks.check(piece, stored[at:at + piece.length]):
                                self._on_damage(f"has a chunk that does not hash to its name {piece.digest.hex()}")
                            at += piece.length
                    self._cached = (start, stored)
                    return self._cached
                data = self._chunks.load(chunk)
            except PackMissing:
                if attempt == 0:  # moved by a compaction since it was looked up
                    continue
                self._on_damage(f"has its chunk {chunk.digest.hex()} in pack {chunk.pack:016x}, which is missing")
                raise
            except (ShortRead, DamagedChunk) as exc:
                self._on_damage(f"has a damaged chunk {chunk.digest.hex()} ({exc})")
                raise
            if self._verify and not self._chunks.check(chunk, data):
                self._on_damage(f"has a chunk that does not hash to its name {chunk.digest.hex()}")
            self._cached = (start, data)
            return self._cached
        raise AssertionError("unreachable")

    def _locate(self, offset: int, *, refresh: bool) -> int:
        """The index in the window of the extent holding byte ``offset`` (the window moves there if needed)."""
        index = bisect.bisect_right(self._ends, offset)
        if refresh or index >= len(self._window) or self._window[index][0].start > offset:
            self._load_window(offset)
            index = 0
        return index

    def _raw_span(self, index: int) -> list[Chunk]:
        """The chunks from ``index`` on that one read can fetch: single, raw, back to back in one pack.

        Fresh content is appended in order, so a sequential reader of it
        gets up to ``SPAN_BYTES`` per read instead of a read per chunk.
        """
        first = self._window[index][1]
        span = [first]
        if first.codec != RAW:
            return span
        total = first.stored
        for extent, chunk in self._window[index + 1:]:
            last = span[-1]
            if (extent.count != 1 or chunk.codec != RAW or chunk.pack != last.pack
                    or chunk.offset != last.offset + last.stored or total + chunk.stored > SPAN_BYTES):
                break
            span.append(chunk)
            total += chunk.stored
        return span

    def _load_window(self, offset: int) -> None:
        window: list[tuple[Extent, Chunk]] = []
        with self._chunks.catalog.read() as tx:
            for extent in tx.extents(self.digest, offset):
                chunk = tx.chunk(extent.chunk)
                if chunk is None:
                    self._on_damage(f"names the chunk {extent.chunk.hex()}, which the catalog lacks")
                    raise errors.BadContent(f"chunk {extent.chunk.hex()} is missing")
                window.append((extent, chunk))
                if len(window) >= WINDOW:
                    break
        if not window or window[0][0].start > offset:
            self._on_damage(f"has no extent at offset {offset}")
            raise errors.BadContent(f"no extent at offset {offset}")
        self._window = window
        self._ends = [extent.end for extent, _ in window]

    def hash(self, on_read: Progress | None = None) -> tuple[bytes, int]:
        hasher = blake3.blake3()
        for _, data in self._pieces(self.size):
            hasher.update(data)
            if on_read is not None:
                on_read(len(data))
        return hasher.digest(), self.size

    def copy_to(self, target: StagingFile, length: int, on_copied: Progress | None = None) -> None:
        """Write the first ``length`` bytes into an empty staging file, leaving chunks of zeros as holes."""
        if length > self.size:
            raise ShortRead(f"content {self.digest.hex()} holds {self.size} bytes, not the {length} to copy")
        for start, data in self._pieces(length):
            if data.count(0) != len(data):
                target.write(data, start)
            if on_copied is not None:
                on_copied(len(data))
        target.truncate(length)

    def _pieces(self, length: int) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) of each chunk, in order, up to ``length`` (the last one cut there)."""
        offset = 0
        while offset < length:
            start, data = self._chunk_at(offset)
            piece = data[offset - start:length - start]
            yield offset, piece
            offset += len(piece)

    def close(self) -> None:
        self._window, self._ends, self._cached = [], [], None
