"""Content-defined chunks: the same boundaries from a file range, a stream in any pieces and one cut_buf."""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusestore.pool.chunker import DEFAULT_PARAMS, WINDOW, Chunk, ChunkParams, StreamChunker, chunks

SMALL = ChunkParams(64, 256, 1024)  # small chunks: many boundaries, and max_size cuts, in little content


def reference(data: bytes, params: ChunkParams, start: int = 0) -> list[Chunk]:
    """One cut_buf over the whole content: the definition of the boundaries."""
    return [(start + chunk.offset, bytes(chunk.data)) for chunk in params.cutter().cut_buf(data)]


def of_bytes(data: bytes, base: int = 0) -> Callable[[int, int], bytes]:
    """A pread over bytes that sit at ``base`` in the content."""
    def read(length: int, offset: int) -> bytes:
        return data[offset - base:offset - base + length]
    return read



def streamed(data: bytes, params: ChunkParams, cuts: list[int], start: int = 0) -> list[Chunk]:
    chunker = StreamChunker(params, start)
    found: list[Chunk] = []
    previous = 0
    for cut in sorted(cuts) + [len(data)]:
        found += chunker.feed(memoryview(data)[previous:cut])
        assert chunker.pending <= params.max_size + (cut - previous)
        previous = cut
    found += chunker.finish()
    assert chunker.pending == 0
    return found


def content(rng: random.Random, size: int) -> bytes:
    """Random bytes with runs of zeros and of repeated text (where max_size cuts and low-entropy cuts happen)."""
    parts: list[bytes] = []
    while sum(map(len, parts)) < size:
        kind = rng.randrange(3)
        length = rng.randrange(1, 5000)
        parts.append(rng.randbytes(length) if kind == 0 else bytes(length) if kind == 1 else b"text " * length)
    return b"".join(parts)[:size]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.integers(0, 40000), cuts=st.lists(st.integers(0, 40000), max_size=30),
       start=st.integers(0, 2**40))
def test_any_split_of_a_stream_gives_the_chunks_of_one_cut(seed: int, size: int, cuts: list[int], start: int) -> None:
    data = content(random.Random(seed), size)
    expected = reference(data, SMALL, start)
    assert streamed(data, SMALL, [cut for cut in cuts if cut <= size], start) == expected
    assert list(chunks(of_bytes(data, start), start, start + size, SMALL)) == expected


def test_chunks_tile_the_content_within_the_size_limits() -> None:
    data = content(random.Random(1), 3 * WINDOW + 12345)
    found = list(chunks(of_bytes(data), 0, len(data), DEFAULT_PARAMS))
    assert b"".join(piece for _, piece in found) == data
    assert [offset for offset, _ in found] == [sum(len(p) for _, p in found[:i]) for i in range(len(found))]
    assert all(DEFAULT_PARAMS.min_size <= len(piece) <= DEFAULT_PARAMS.max_size for _, piece in found[:-1])
    assert any(len(piece) == DEFAULT_PARAMS.max_size for _, piece in found)  # the zero runs
    assert found == reference(data, DEFAULT_PARAMS)


def test_a_range_of_a_file_chunks_like_the_bytes_it_holds(tmp_path: Path) -> None:
    data = os.urandom(2 * WINDOW + 999)
    path = tmp_path / "content"
    path.write_bytes(b"before" + data + b"after")
    fd = os.open(path, os.O_RDONLY)
    try:
        found = list(chunks(lambda length, offset: os.pread(fd, length, offset), 6, 6 + len(data), DEFAULT_PARAMS))
    finally:
        os.close(fd)
    assert found == reference(data, DEFAULT_PARAMS, start=6)


def test_short_content_is_one_chunk_and_an_empty_range_none() -> None:
    data = b"x" * (DEFAULT_PARAMS.min_size - 1)
    assert list(chunks(of_bytes(data), 0, len(data), DEFAULT_PARAMS)) == [(0, data)]
    assert list(chunks(of_bytes(data), 5, 5, DEFAULT_PARAMS)) == []
    chunker = StreamChunker(DEFAULT_PARAMS, 100)
    assert chunker.feed(data) == []
    assert chunker.pending == len(data)
    assert chunker.finish() == [(100, data)]
    assert StreamChunker(DEFAULT_PARAMS).finish() == []
    for size in (DEFAULT_PARAMS.min_size, DEFAULT_PARAMS.min_size + 1):  # where chunks() stops taking a range whole
        data = content(random.Random(size), size)
        assert list(chunks(of_bytes(data, 7), 7, 7 + size, DEFAULT_PARAMS)) == reference(data, DEFAULT_PARAMS, 7)


def test_chunks_end_where_the_content_does() -> None:
    """A pread that comes back short means the content ends there: chunks up to it, none past it."""
    data = os.urandom(WINDOW + 5000)
    assert list(chunks(of_bytes(data), 0, len(data) + 3 * WINDOW, DEFAULT_PARAMS)) == reference(data, DEFAULT_PARAMS)


def test_feed_copies_what_it_keeps() -> None:
    """The caller may reuse its buffer after a feed: the chunks must hold the bytes as they were fed."""
    data = os.urandom(10000)
    buffer = bytearray(data)
    chunker = StreamChunker(DEFAULT_PARAMS)
    assert chunker.feed(memoryview(buffer)) == []
    buffer[:] = bytes(len(buffer))
    assert chunker.finish() == reference(data, DEFAULT_PARAMS)


def test_a_stream_emits_chunks_before_it_finishes_and_keeps_little() -> None:
    data = os.urandom(1 << 20)
    chunker = StreamChunker(DEFAULT_PARAMS)
    emitted = 0
    for offset in range(0, len(data), 4096):
        emitted += sum(len(piece) for _, piece in chunker.feed(data[offset:offset + 4096]))
        assert chunker.pending <= DEFAULT_PARAMS.max_size + 4096
        assert emitted + chunker.pending == offset + 4096
    assert emitted > len(data) - DEFAULT_PARAMS.max_size - 4096


def test_a_change_in_the_middle_leaves_the_chunks_around_it() -> None:
    """Content-defined resynchronisation: an inserted and a changed byte disturb only the chunks near them."""
    rng = random.Random(7)
    data = rng.randbytes(4 << 20)
    middle = len(data) // 2
    before = list(chunks(of_bytes(data), 0, len(data), DEFAULT_PARAMS))
    for changed in (data[:middle] + b"!" + data[middle:],  # one byte inserted
                    data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:]):  # one byte changed
        after = list(chunks(of_bytes(changed), 0, len(changed), DEFAULT_PARAMS))
        untouched = [chunk for chunk in before if chunk[0] + len(chunk[1]) < middle]  # (see the test below)
        assert after[:len(untouched)] == untouched
        old = {piece for offset, piece in before if offset > middle}
        new = {piece for offset, piece in after if offset > middle}
        assert len(old & new) >= len(old) - 2, (len(old), len(old & new))  # all but the one or two it touched


def test_a_boundary_depends_on_the_byte_after_it() -> None:
    """FastCDC's hash that cuts at n includes byte n, the next chunk's first: a write there may move the cut.

    So re-chunking after a write at x must start at the chunk holding byte x - 1, not x's.
    """
    data = bytearray(random.Random(3).randbytes(1 << 18))
    boundary = next(chunk.length for chunk in DEFAULT_PARAMS.cutter().cut_buf(bytes(data)))
    moved = 0
    for value in range(256):
        data[boundary] = value
        moved += next(chunk.length for chunk in DEFAULT_PARAMS.cutter().cut_buf(bytes(data))) != boundary
    assert 0 < moved < 256


@pytest.mark.timeout(300)
def test_chunking_a_1_gib_sparse_file_keeps_memory_bounded(tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as file:
        file.write(os.urandom(100000))
        file.truncate(1 << 30)
    fd = os.open(path, os.O_RDONLY)
    tracemalloc.start()
    try:
        total = count = 0
        for offset, piece in chunks(lambda length, at: os.pread(fd, length, at), 0, 1 << 30, DEFAULT_PARAMS):
            assert offset == total
            total += len(piece)
            count += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        os.close(fd)
    assert total == 1 << 30
    assert count >= (1 << 30) // DEFAULT_PARAMS.max_size
    assert peak < 4 * WINDOW + 4 * DEFAULT_PARAMS.max_size, peak  # a few windows: not the file


@pytest.mark.parametrize("sizes", [(63, 256, 1024), (64, 255, 1024), (64, 256, 1023), (1 << 21, 4 << 20, 8 << 20),
                                   (64, 8 << 20, 16 << 20), (64, 256, 32 << 20), (4096, 2048, 65536),
                                   (4096, 65536, 32768)])
def test_params_outside_pyfastcdc_limits_are_refused(sizes: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        ChunkParams(*sizes)


def test_params_at_the_limits_are_accepted_by_pyfastcdc() -> None:
    for sizes in ((64, 256, 1024), (1 << 20, 4 << 20, 16 << 20), (256, 256, 1024), (4096, 4096, 4096)):
        assert list(ChunkParams(*sizes).cutter().cut_buf(b"x" * 10000))
