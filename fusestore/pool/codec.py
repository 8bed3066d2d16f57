"""How one chunk's bytes are stored: raw, or as one zstd frame when that pays.

A chunk is named by the BLAKE3 of its uncompressed bytes whatever its codec
(the store's business), so the codec is a storage detail the catalog keeps
beside the chunk's place: ``encode`` gives the codec it used and the stored
bytes, ``decode`` needs the codec and the uncompressed length back. A zstd
frame carries its content size and no checksum (the store hashes every chunk
it reads); ``decode`` checks the size against the catalog's before it
allocates anything, so a damaged frame cannot ask for a huge buffer.

Compressing only pays when it saves enough to be worth a decompression on
every read: a chunk is stored compressed when the frame is at least 1/32
shorter than the chunk. Chunks under 128 bytes stay raw: zstd's frame and
block headers eat what little they could save (text in 64-byte pieces does
not shrink at all, in 128-byte pieces by a quarter).

Incompressible data costs little: zstd notices and emits raw blocks. Plain
zstd on 16 KiB chunks, one thread (a 2-vCPU EPYC VM, zstandard 0.25): os.urandom
at level 1, 3, 9, 19: 2200, 2000, 510, 31 MB/s; Python source text: 400,
360, 44, 5 MB/s (stored at 29%, 28%, 26%, 25% of its size). So above level
3 a chunk is first tried at level 1: one that saves nothing there is stored
raw without paying the slow level (text then costs 1% more at level 19).
A chunk of at least four ``SAMPLE`` sizes is first judged by one sample
from its middle at level 1: one that does not shrink by 1/32 there makes the
chunk raw without compressing the rest, so incompressible data (media,
archives, fresh random bytes) costs a quarter of a compression. A chunk
whose middle does not compress but whose ends would is stored raw: a little
space, for the speed of large incompressible writes. ``encode`` itself, 16
KiB chunks: os.urandom about 6.8 GB/s with a 1 KiB sample (4.5 GB/s with 4 KiB, 1.9
without); text 260 to 320 MB/s at level 3. On the backup series of
``scripts/series.py`` samples of 1, 2 and 4 KiB store the same bytes. ``decode`` of text: 470 MB/s.

``encode`` runs on many threads at once: zstandard releases the GIL while it
works, and each thread has its own compressors and decompressor (they keep
state between calls and are not safe to share).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import zstandard

RAW = 0
ZSTD = 1

MIN_LEVEL = -(1 << 17)  # zstd's fastest level: it treats anything lower as this
MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL
DEFAULT_ZSTD_LEVEL = 3
PROBE_ABOVE = 3  # levels slower than this try level 1 first
PROBE_LEVEL = 1
MIN_COMPRESSED = 128  # shorter chunks are stored raw
SAVING = 32  # a frame must be at least 1/SAVING shorter than the chunk
SAMPLE = 1024  # bytes from the middle of a chunk of four times as many, tried first


class DamagedChunk(Exception):
    """Stored bytes that do not decode (bad zstd frame, wrong decoded length)."""


@dataclass(frozen=True)
class Compression:
    """A codec and its level (0 for raw); the text form is ``none`` or ``zstd:LEVEL``."""

    codec: int
    level: int = 0

    def __post_init__(self) -> None:
        if self.codec == RAW:
            if self.level != 0:
                raise ValueError(f"raw storage has no level, not {self.level}")
        elif self.codec == ZSTD:
            if self.level == 0 or not MIN_LEVEL <= self.level <= MAX_LEVEL:
                raise ValueError(f"zstd level {self.level} is not in 1..{MAX_LEVEL} (or a fast level "
                                 f"-1..{MIN_LEVEL})")
        else:
            raise ValueError(f"no codec {self.codec}")

    @classmethod
    def parse(cls, text: str) -> Compression:
        """``none``, ``zstd`` (at ``DEFAULT_ZSTD_LEVEL``) or ``zstd:LEVEL``."""
        if text == "none":
            return cls(RAW)
        if text == "zstd":
            return cls(ZSTD, DEFAULT_ZSTD_LEVEL)
        name, colon, level = text.partition(":")
        if name == "zstd" and colon:
            try:
                number = int(level)
            except ValueError:
                raise ValueError(f"compression {text!r}: the zstd level {level!r} is not a number") from None
            try:
                return cls(ZSTD, number)
            except ValueError as exc:
                raise ValueError(f"compression {text!r}: {exc}") from None
        raise ValueError(f"compression {text!r} is not one of none, zstd, zstd:LEVEL")

    def __str__(self) -> str:
        return "none" if self.codec == RAW else f"zstd:{self.level}"


DEFAULT_COMPRESSION = Compression(ZSTD, DEFAULT_ZSTD_LEVEL)


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.compressors: dict[int, zstandard.ZstdCompressor] = {}
        self.decompressor = zstandard.ZstdDecompressor()

    def compressor(self, level: int) -> zstandard.ZstdCompressor:
        found = self.compressors.get(level)
        if found is None:
            found = self.compressors[level] = zstandard.ZstdCompressor(
                level=level, write_content_size=True, write_checksum=False)
        return found


_local = _PerThread()


def encode(data: bytes | memoryview, compression: Compression) -> tuple[int, bytes | memoryview]:
    """(codec used, stored bytes): a zstd frame when it is at least 1/32 shorter than ``data``, else ``data`` itself."""
    length = len(data)
    if compression.codec == RAW or length < MIN_COMPRESSED:
        return RAW, data
    worth = length - length // SAVING
    if length >= 4 * SAMPLE:  # a quick test: a sample that saves nothing at the fastest level says "raw"
        sample = data[(length - SAMPLE) // 2:(length + SAMPLE) // 2]
        if len(_local.compressor(PROBE_LEVEL).compress(sample)) > SAMPLE - SAMPLE // SAVING:
            return RAW, data
    if compression.level > PROBE_ABOVE and len(_local.compressor(PROBE_LEVEL).compress(data)) > worth:
        return RAW, data
    frame = _local.compressor(compression.level).compress(data)
    if len(frame) > worth:
        return RAW, data
    return ZSTD, frame


def decode(codec: int, stored: bytes, length: int) -> bytes:
    """The chunk's ``length`` uncompressed bytes; ``DamagedChunk`` when ``stored`` cannot be them."""
    if codec == RAW:
        if len(stored) != length:
            raise DamagedChunk(f"a raw chunk of {length} bytes is stored in {len(stored)}")
        return stored
    if codec != ZSTD:
        raise DamagedChunk(f"no codec {codec}")
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as exc:
        raise DamagedChunk(f"not a zstd frame: {exc}") from None
    if declared != length:
        raise DamagedChunk(f"a zstd frame of {declared} bytes stands for a chunk of {length}")
    try:
        data = _local.decompressor.decompress(stored, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise DamagedChunk(f"a damaged zstd frame: {exc}") from None
    if len(data) != length:
        raise DamagedChunk(f"a zstd frame decoded to {len(data)} bytes, not {length}")
    return data
