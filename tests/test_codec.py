"""A chunk's stored form: raw or one zstd frame, chosen by what it saves; damaged bytes are refused."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import zstandard

from fusestore.pool.codec import (
    DEFAULT_COMPRESSION,
    MIN_COMPRESSED,
    RAW,
    ZSTD,
    Compression,
    DamagedChunk,
    decode,
    encode,
)

TEXT = b"".join(path.read_bytes() for path in sorted(Path(__file__).parent.glob("test_*.py")))[:1 << 20]
SAMPLES = {
    "random": os.urandom(16384),
    "zeros": bytes(65536),
    "text": TEXT[:16384],
    "empty": b"",
    "tiny": b"ab" * 10,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("compression", [DEFAULT_COMPRESSION, Compression(RAW), Compression(ZSTD, 19),
                                         Compression(ZSTD, -5)], ids=str)
def test_every_sample_round_trips(name: str, compression: Compression) -> None:
    data = SAMPLES[name]
    codec, stored = encode(data, compression)
    assert decode(codec, stored, len(data)) == data


def test_compressible_chunks_are_stored_compressed_and_random_ones_raw() -> None:
    codec, stored = encode(SAMPLES["text"], DEFAULT_COMPRESSION)
    assert codec == ZSTD and len(stored) < len(SAMPLES["text"]) // 2
    assert encode(bytes(65536), DEFAULT_COMPRESSION)[0] == ZSTD
    for level in (1, 3, 19, -5):  # above level 3 the level-1 probe decides; below, the frame itself
        assert encode(SAMPLES["random"], Compression(ZSTD, level)) == (RAW, SAMPLES["random"])


def test_a_chunk_whose_middle_does_not_compress_is_raw_without_compressing_it_all() -> None:
    data = bytes(12288) + os.urandom(8192) + bytes(12288)  # the sample, from the middle, is random; most is not
    assert len(zstandard.ZstdCompressor(level=3).compress(data)) < len(data) // 2
    assert encode(data, DEFAULT_COMPRESSION)[0] == RAW


def test_raw_compression_never_compresses() -> None:
    assert encode(bytes(65536), Compression(RAW)) == (RAW, bytes(65536))


def test_a_frame_must_save_a_32nd() -> None:
    """Random bytes with a compressible stretch in the middle (where the sample is): compressed exactly when the
    frame is 1/32 shorter."""
    codecs = set()
    for zeros in range(0, 1024, 16):
        half = (16384 - zeros) // 2
        data = os.urandom(half) + bytes(zeros) + os.urandom(16384 - zeros - half)
        frame = zstandard.ZstdCompressor(level=3).compress(data)
        codec, stored = encode(data, DEFAULT_COMPRESSION)
        assert codec == (ZSTD if len(frame) <= len(data) - len(data) // 32 else RAW), zeros
        assert decode(codec, stored, len(data)) == data
        codecs.add(codec)
    assert codecs == {RAW, ZSTD}  # the rule was put to the test on both sides


def test_tiny_chunks_stay_raw_even_when_they_would_shrink() -> None:
    data = b"a" * (MIN_COMPRESSED - 1)
    assert len(zstandard.ZstdCompressor().compress(data)) < len(data) // 2
    assert encode(data, DEFAULT_COMPRESSION) == (RAW, data)
    assert encode(data + b"a", DEFAULT_COMPRESSION)[0] == ZSTD


def test_a_memoryview_is_encoded_like_its_bytes() -> None:
    data = SAMPLES["text"]
    assert encode(memoryview(data), DEFAULT_COMPRESSION) == encode(data, DEFAULT_COMPRESSION)
    assert encode(memoryview(SAMPLES["tiny"]), DEFAULT_COMPRESSION) == (RAW, SAMPLES["tiny"])


def test_frames_carry_their_content_size_and_no_checksum() -> None:
    _, stored = encode(SAMPLES["text"], DEFAULT_COMPRESSION)
    parameters = zstandard.get_frame_parameters(stored)
    assert parameters.content_size == len(SAMPLES["text"])
    assert not parameters.has_checksum


def test_garbage_and_wrong_lengths_are_damaged_chunks() -> None:
    data = SAMPLES["text"]
    _, stored = encode(data, DEFAULT_COMPRESSION)
    with pytest.raises(DamagedChunk):
        decode(ZSTD, b"not a zstd frame at all", len(data))
    with pytest.raises(DamagedChunk):
        decode(ZSTD, stored, len(data) + 1)  # the frame says one size, the catalog another
    with pytest.raises(DamagedChunk):
        decode(ZSTD, stored[:len(stored) // 2], len(data))  # truncated
    with pytest.raises(DamagedChunk):
        decode(ZSTD, stored + b"\0", len(data))  # trailing bytes
    damaged = bytearray(stored)
    damaged[len(damaged) // 2] ^= 0xFF
    try:
        decoded = decode(ZSTD, bytes(damaged), len(data))
    except DamagedChunk:
        pass
    else:  # no checksum: a flipped literal may decode, but never to the chunk (the store's hash catches it)
        assert decoded != data and len(decoded) == len(data)
    with pytest.raises(DamagedChunk):
        decode(RAW, data, len(data) - 1)
    with pytest.raises(DamagedChunk):
        decode(7, data, len(data))


def test_a_frame_that_claims_a_huge_size_is_refused_before_decoding() -> None:
    huge = zstandard.ZstdCompressor().compress(bytes(1 << 30))  # a few KiB claiming 1 GiB
    with pytest.raises(DamagedChunk):
        decode(ZSTD, huge, 16384)


@pytest.mark.parametrize("text, expected", [
    ("none", Compression(RAW)),
    ("zstd", Compression(ZSTD, 3)),
    ("zstd:1", Compression(ZSTD, 1)),
    ("zstd:22", Compression(ZSTD, 22)),
    ("zstd:-7", Compression(ZSTD, -7)),
])
def test_parse_and_str_round_trip(text: str, expected: Compression) -> None:
    assert Compression.parse(text) == expected
    assert Compression.parse(str(expected)) == expected


@pytest.mark.parametrize("text, message", [
    ("zstd:0", "zstd level 0"),
    ("zstd:23", "zstd level 23"),
    ("zstd:-200000", "zstd level -200000"),
    ("zstd:fast", "not a number"),
    ("zstd:", "not a number"),
    ("gzip", "not one of none, zstd"),
    ("none:1", "not one of none, zstd"),
    ("ZSTD", "not one of none, zstd"),
    ("", "not one of none, zstd"),
])
def test_parse_refuses_what_it_cannot_name_clearly(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Compression.parse(text)


def test_a_compression_cannot_be_built_invalid() -> None:
    with pytest.raises(ValueError):
        Compression(RAW, 3)
    with pytest.raises(ValueError):
        Compression(ZSTD)
    with pytest.raises(ValueError):
        Compression(2)
    assert str(DEFAULT_COMPRESSION) == "zstd:3"


def test_many_threads_encode_and_decode_at_once() -> None:
    """Each thread has its own compressors: shared ones would corrupt or raise under contention."""
    pieces = [TEXT[i:i + 16384] for i in range(0, len(TEXT), 16384)]
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                for piece in pieces:
                    codec, stored = encode(piece, Compression(ZSTD, 3))
                    assert decode(codec, stored, len(piece)) == piece
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
