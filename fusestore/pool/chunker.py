"""Content-defined chunk boundaries: FastCDC 2020 (pyfastcdc), over a range of a file or a stream.

A boundary is where a rolling hash of the bytes around it hits a mask, so an
insertion moves only the boundaries near it and the chunks after it are the
same chunks again (they deduplicate). FastCDC skips the first ``min_size``
bytes of every chunk and cuts at ``max_size`` at the latest; its actual mean
chunk is about ``avg_size + min_size`` (pyfastcdc's documented quirk, from
the paper's cut-point skipping). The boundaries are part of the store's
format (a changed boundary is a chunk stored twice), so the parameters the
library could default are pinned here: normalized chunking 1, gear seed 0.

pyfastcdc cuts whole buffers only. Scanning from a chunk's start, the cut
depends on the bytes up to it and on the one byte after it (the hash that
triggers a cut at ``n`` includes byte ``n``), never on later bytes or on
where the buffer ends: so every chunk of a buffer but the last is final, and
the last (the tail) is cut again with the bytes that follow. ``StreamChunker``
keeps that tail and cuts once more than ``max_size`` bytes are pending (each
cut then yields at least one chunk, and a stream fed in small writes is not
rescanned on every write); ``chunks`` feeds one a range of a file, a window
at a time, so memory stays a few windows whatever the file's size. Both give
exactly the chunks of one ``cut_buf`` over the whole content.

A ``FastCDC`` object is not safe to share between threads: each ``chunks``
call and each ``StreamChunker`` makes its own (it costs a few attributes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from pyfastcdc import FastCDC

from ..digests import IO_BUFFER

# pyfastcdc's limits (it raises ValueError outside them, with muddled messages).
MIN_SIZE_RANGE = (64, 1 << 20)
AVG_SIZE_RANGE = (256, 4 << 20)
MAX_SIZE_RANGE = (1024, 16 << 20)
NORMALIZED_CHUNKING: Final[Literal[1]] = 1
SEED = 0
WINDOW = IO_BUFFER  # bytes per read of ``chunks``

Chunk = tuple[int, memoryview]  # (offset in the content, a view of its bytes; it keeps its cut's buffer alive)


@dataclass(frozen=True)
class ChunkParams:
    """FastCDC's size constraints, in bytes: ``min_size <= avg_size <= max_size``, each within pyfastcdc's range."""

    min_size: int
    avg_size: int
    max_size: int

    def __post_init__(self) -> None:
        for name, (low, high) in (("min_size", MIN_SIZE_RANGE), ("avg_size", AVG_SIZE_RANGE),
                                  ("max_size", MAX_SIZE_RANGE)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"chunk {name} {value} is not in {low}..{high}")
        if not self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(f"chunk sizes must be min <= avg <= max, not {self.min_size}, {self.avg_size}, "
                             f"{self.max_size}")

    def cutter(self) -> FastCDC:
        """A new FastCDC object for these sizes (one per thread: they are not safe to share)."""
        return FastCDC(self.avg_size, min_size=self.min_size, max_size=self.max_size,
                       normalized_chunking=NORMALIZED_CHUNKING, seed=SEED)


DEFAULT_PARAMS = ChunkParams(2048, 16384, 65536)


class StreamChunker:
    """The chunks of bytes fed in pieces: the same boundaries however the bytes are split.

    ``feed`` returns the chunks it has found final, ``finish`` the rest.
    ``pending`` (fed, not yet returned) stays at most ``max_size`` plus one feed.
    The chunks are views of one buffer per cut (its bytes are copied once,
    the pending tail twice): a copy per chunk cost as much as cutting.
    One stream: one thread at a time.
    """

    def __init__(self, params: ChunkParams, start: int = 0) -> None:
        """``start``: the content offset of the first byte fed (the offsets returned count from it)."""
        self.params = params
        self._cutter = params.cutter()
        self._offset = start  # of the first pending byte
        self._pieces: list[bytes] = []
        self._pending = 0

    @property
    def pending(self) -> int:
        return self._pending

    def feed(self, data: bytes | memoryview) -> list[Chunk]:
        if data:
            self._pieces.append(data if isinstance(data, bytes) else bytes(data))  # a view's buffer may be reused
            self._pending += len(data)
        if self._pending <= self.params.max_size:
            return []
        return self._cut(final=False)

    def finish(self) -> list[Chunk]:
        return self._cut(final=True) if self._pending else []

    def _cut(self, *, final: bool) -> list[Chunk]:
        if len(self._pieces) == 2 and len(self._pieces[1]) > self.params.max_size:
            bridged = self._cut_bridged(final=final)
            if bridged is not None:
                return bridged
        buffer = memoryview(self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces))
        return self._take(buffer, final=final)

    def _cut_bridged(self, *, final: bool) -> list[Chunk] | None:
        """The tail, then a large feed, cut without joining them: a copy of the feed cost a third of the cut.

        The chunk that starts in the tail is cut from the tail and the feed's
        first ``max_size`` bytes (it ends within them, and the byte after its
        end is there too); the chunks after it are views of the feed itself.
        None where that chunk ends inside the tail (at a boundary the byte
        after the tail's end reveals): the caller joins them.
        """
        tail, data = self._pieces
        bridge = memoryview(tail + data[:self.params.max_size])
        first = next(iter(self._cutter.cut_buf(bridge))).length
        if first < len(tail):
            return None
        rest = memoryview(data)[first - len(tail):]
        done = [(self._offset, bridge[:first])]
        self._offset += first
        self._pending -= first
        return done + self._take(rest, final=final)

    def _take(self, buffer: memoryview, *, final: bool) -> list[Chunk]:
        """The final chunks of one cut of ``buffer``; what follows them stays pending."""
        found = [(chunk.offset, chunk.length) for chunk in self._cutter.cut_buf(buffer)]
        if not final and found[-1][1] < self.params.max_size:
            found.pop()  # the tail: the bytes after it may move its end
        done = [(self._offset + offset, buffer[offset:offset + length]) for offset, length in found]
        consumed = sum(length for _, length in found)
        self._pieces = [bytes(buffer[consumed:])] if consumed < len(buffer) else []
        self._pending -= consumed
        self._offset += consumed
        return done


def chunks(read: Callable[[int, int], bytes], start: int, end: int, params: ChunkParams) -> Iterator[Chunk]:
    """(offset, bytes) of every chunk of the content's bytes ``[start, end)``, read by ``read(length, offset)``.

    ``read`` is a pread: it may return fewer bytes than asked only where the
    content ends, and then so do the chunks (short of ``end``). Memory: a
    few ``WINDOW``\\ s and ``max_size``, whatever the range's length.
    """
    if end - start <= params.min_size:  # FastCDC cuts nowhere in a chunk's first min_size bytes: one chunk
        data = read(end - start, start)
        if data:
            yield start, memoryview(data)
        return
    chunker = StreamChunker(params, start)
    offset = start
    while offset < end:
        want = min(WINDOW, end - offset)
        data = read(want, offset)
        offset += len(data)
        yield from chunker.feed(data)
        if len(data) < want:
            break
    yield from chunker.finish()
