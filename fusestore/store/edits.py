"""In-place edits without a copy: a staging file whose holes read as the content it edits.

Writing into a file opened without O_TRUNC must not first copy the whole
content. Its staging file starts as one hole as long as the content (the
*base*); what is written fills it, and the rest keeps reading as the base:

- A write fills whole blocks of the staging file's filesystem: where it
  covers a block only partly, the rest of that block is read (from the base,
  or the staging file) and written with it. So the staging file's data is
  exactly what was written, and its holes are the base's bytes.
- ``base_length`` bounds the base: a truncation below it lowers it, so
  bytes a later extension brings back read as zeros, as on any filesystem.
  Holes at or past it read as zeros.
- The staging record names the base and its length (``StagingRecord.base``)
  and holds one reference to it, so the base outlives any change of the
  file's content meanwhile, and recovery reads the edit as the file did.

The commit stores only around the written span: the base's chunks before
it and after it are taken as they are (``Chunks.store``'s ``reuse``); the
whole content is still read once, for its BLAKE3.

This needs a filesystem that keeps written zeros as data: ext4, xfs, btrfs
and tmpfs do; ZFS with compression turns them into holes, so there an edit
copies the content first (``exact_holes``).
"""

from __future__ import annotations

from collections.abc import Callable

import blake3

from .. import linux
from ..digests import IO_BUFFER
from ..pool import BlobReader, StagingArea, StagingFile
from .reuse import Reuse

HOLE_LOSING_FILESYSTEMS = {0x2FC12FC1}  # zfs (with compression, a block of zeros is stored as a hole)


def exact_holes(staging: StagingArea) -> bool:
    """Whether staging files keep every written block as data, and tell holes (see the module docstring)."""
    if linux.filesystem_magic(staging.root) in HOLE_LOSING_FILESYSTEMS:
        return False
    probe = staging.create()
    try:
        block = probe.block_size()
        probe.truncate(3 * block)
        probe.write(bytes(block), block)
        return list(probe.extents(0, 3 * block)) == [(0, block, False), (block, block, True),
                                                        (2 * block, block, False)]
    finally:
        staging.discard(probe)


class Edit:
    """An open file's change that started from a stored content without copying it."""

    def __init__(self, staged: StagingFile, base: bytes, reader: BlobReader, base_length: int) -> None:
        self.staged = staged
        self.base = base
        self.base_length = base_length
        self._reader = reader
        self._block = staged.block_size()

    def read(self, length: int, offset: int) -> bytes:
        end = min(offset + length, self.staged.size())
        pieces = []
        for start, size, is_data in self.staged.extents(offset, end):
            if is_data:
                pieces.append(self.staged.read(size, start))
                continue
            from_base = max(0, min(start + size, self.base_length) - start)
            if from_base:
                pieces.append(self._reader.pread(from_base, start))
            pieces.append(bytes(size - from_base))
        return b"".join(pieces)

    def write(self, data: bytes, offset: int) -> int:
        """Write ``data`` at ``offset``, with what completes its first and last blocks if they were holes."""
        block = self._block
        first = offset - offset % block
        end = offset + len(data)
        last = end - end % block  # the start of the block the write ends in
        head = tail = b""
        if first < offset and self._is_hole(first):
            head = self.read(offset - first, first).ljust(offset - first, b"\0")  # past the end: zeros
        if end % block and self._is_hole(last):
            tail = self.read(last + block - end, end)  # nothing past the end
        written = self.staged.write(head + data + tail, offset - len(head))
        return max(0, min(len(data), written - len(head)))

    def truncate(self, size: int) -> bool:
        """Whether the truncation lowered ``base_length`` (the caller records it)."""
        self.staged.truncate(size)
        if size >= self.base_length:
            return False
        self.base_length = size
        return True

    def hash(self, on_read: Callable[[int], object] | None = None, size: int | None = None) -> tuple[bytes, int]:
        """BLAKE3 and size of the edited content (or its first ``size`` bytes), read once."""
        total = self.staged.size() if size is None else min(size, self.staged.size())
        hasher = blake3.blake3()
        offset = 0
        while offset < total:
            piece = self.read(min(IO_BUFFER, total - offset), offset)
            hasher.update(piece)
            offset += len(piece)
            if on_read is not None:
                on_read(len(piece))
        return hasher.digest(), total

    def reuse(self) -> Reuse:
        """What the commit may take from the base: all but the staging file's data (a truncation lowered the limit)."""
        data = [(start, start + size) for start, size, is_data in self.staged.extents(0, self.staged.size())
                if is_data]
        start = min(self.base_length, data[0][0]) if data else self.base_length
        end = data[-1][1] if data else start
        return Reuse(self.base, start, max(start, end), self.base_length)

    def close(self) -> None:
        self._reader.close()

    def _is_hole(self, offset: int) -> bool:
        """Whether the staging file's block at ``offset`` (block-aligned) holds nothing written."""
        if offset >= self.staged.size():
            return False  # past the end: there is nothing there to keep
        return not next(iter(self.staged.extents(offset, offset + 1)))[2]
