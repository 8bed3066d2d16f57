"""The anchor: the last catalog snapshot a checkpoint made durable, and the way back to it.

The catalog commits without waiting for the disk (LMDB's ``sync=False``):
a commit survives a crash of the process, since its pages are in the
kernel's cache, but a power loss keeps any subset of the pages written
since the last sync, the newer meta page included, and LMDB alone would
then open a torn tree. A checkpoint therefore *anchors* the catalog: it
takes a read transaction, syncs the data file, and writes the two meta
pages the sync made durable to this file. That read transaction is held
until the next anchor is durable, and LMDB never overwrites a page that a
live reader's snapshot reaches: whatever reaches the disk later, every page
of the anchored snapshot is on it unchanged. After a power loss, writing
the anchored meta pages back brings the catalog to that snapshot.

A power loss is told from a crash of the process by the boot: each anchor
records the kernel's boot id, and whether the catalog was closed. An
anchor from another boot that was not closed means the machine went down
under an open store (a crash of the process alone keeps every commit).

The file holds two slots, written in turn: a torn write of one leaves the
other, and the slot with the higher sequence number and a good checksum is
the anchor. Layout: ``docs/FORMAT.md``.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from .. import errors, linux, private

MAGIC = b"FSANCHOR"
VERSION = 1
_HEAD = struct.Struct(">8sIQ16sBQI")  # magic, version, sequence, boot id, closed, txnid, page size
_CHECKSUM = struct.Struct(">I")
META_TXNID = struct.Struct("<Q")  # an LMDB meta page's transaction id, at this offset, in the host's order
META_TXNID_OFFSET = 144  # the page header (16), then mm_magic..mm_last_pg of LMDB 0.9's MDB_meta
SLOT_SIZE = 256 << 10  # a slot holds LMDB's largest page size (64 KiB) twice; slots at 0 and SLOT_SIZE


@dataclass(frozen=True)
class Anchor:
    """One anchored snapshot: the data file's first two pages (its meta pages) as a sync left them."""

    sequence: int
    boot: bytes
    closed: bool
    txnid: int
    metas: bytes

    @property
    def page_size(self) -> int:
        return len(self.metas) // 2


def meta_txnids(metas: bytes) -> tuple[int, int]:
    """The transaction ids the two meta pages name."""
    page = len(metas) // 2
    return (META_TXNID.unpack_from(metas, META_TXNID_OFFSET)[0],
            META_TXNID.unpack_from(metas, page + META_TXNID_OFFSET)[0])


class AnchorFile:
    """``<catalog>/anchor``: read the last anchor, write the next one (each write is durable when it returns)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._fd = -1
        if not readonly:
            new = not path.exists()
            self._fd = private.open_file(path, os.O_RDWR | os.O_CREAT)
            if new:
                linux.fsync_path(path.parent)

    def last(self) -> Anchor | None:
        """The anchor with the highest sequence number whose slot checks out; None before the first."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        found = [anchor for offset in (0, SLOT_SIZE) if (anchor := _decode(raw, offset)) is not None]
        return max(found, key=lambda anchor: anchor.sequence, default=None)

    def write(self, txnid: int, metas: bytes, boot: bytes, *, closed: bool) -> Anchor:
        previous = self.last()
        anchor = Anchor((previous.sequence + 1) if previous else 1, boot, closed, txnid, metas)
        head = _HEAD.pack(MAGIC, VERSION, anchor.sequence, boot, closed, txnid, anchor.page_size)
        body = head + metas
        slot = body + _CHECKSUM.pack(zlib.crc32(body))
        if os.fstat(self._fd).st_size < SLOT_SIZE + len(slot):  # both slots' blocks, once: a full disk cannot
            os.posix_fallocate(self._fd, 0, len(slot))  # stop a later checkpoint
            os.posix_fallocate(self._fd, SLOT_SIZE, len(slot))
        os.pwrite(self._fd, slot, (anchor.sequence % 2) * SLOT_SIZE)
        os.fdatasync(self._fd)
        return anchor

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _decode(raw: bytes, offset: int) -> Anchor | None:
    """The anchor in the slot at ``offset``; None when it is empty or torn."""
    if offset + _HEAD.size > len(raw):
        return None
    magic, version, sequence, boot, closed, txnid, page_size = _HEAD.unpack_from(raw, offset)
    end = offset + _HEAD.size + 2 * page_size
    if magic != MAGIC or version != VERSION or end + _CHECKSUM.size > min(len(raw), offset + SLOT_SIZE):
        return None
    if _CHECKSUM.unpack_from(raw, end)[0] != zlib.crc32(raw[offset:end]):
        return None
    return Anchor(sequence, boot, bool(closed), txnid, raw[offset + _HEAD.size:end])


def went_down_under(anchor: Anchor | None) -> bool:
    """Whether the machine restarted while the catalog of ``anchor`` was open (a crash of the process is not)."""
    return anchor is not None and not anchor.closed and anchor.boot != linux.boot_id()


def rollback_due(path: Path) -> tuple[int, int] | None:
    """(newest transaction on disk, anchored one) when a power loss left the catalog at ``path`` to be taken back.

    Reads only: the check an inspection makes before it opens the catalog.
    """
    last = AnchorFile(path / "anchor", readonly=True).last()
    if not went_down_under(last) or not (path / "data.mdb").exists():
        return None
    assert last is not None
    with open(path / "data.mdb", "rb") as data:
        found = data.read(len(last.metas))
    return None if found == last.metas else (max(meta_txnids(found)), last.txnid)


def restore(data_file: Path, anchor: Anchor) -> tuple[int, int] | None:
    """Put the anchored meta pages back, before LMDB opens the file; (txnid found, txnid restored) or None.

    None when the file already starts with them (nothing the power took had reached the disk).
    """
    fd = os.open(data_file, os.O_RDWR | os.O_CLOEXEC)
    try:
        found = os.pread(fd, len(anchor.metas), 0)
        if found == anchor.metas:
            return None
        if len(found) < len(anchor.metas):
            raise errors.StoreError(f"catalog {data_file} is shorter than its anchored meta pages: damaged")
        os.pwrite(fd, anchor.metas, 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return max(meta_txnids(found)), anchor.txnid
