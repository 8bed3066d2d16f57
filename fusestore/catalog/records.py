"""The catalog's records and their byte encodings (``docs/FORMAT.md`` is the reference).

Integers are big-endian so that keys sort as numbers; each record knows how
to encode and decode itself, and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FORMAT_VERSION = 4  # the one place it is written: a change of any encoding here changes it
READABLE_FORMATS = (str(FORMAT_VERSION).encode(), b"3", b"2", b"1")  # a store may hold these; the first is written
ROOT_INO = 1

PENDING = 0
COMPLETE = 1
LOST = 2  # fsck --repair took away a damaged or missing blob: reads fail until the content is written again
LAYOUT_WHOLE_BLOB = 0  # the resource's bytes are one blob named by its digest (written by formats 1 and 2)
LAYOUT_CHUNKS = 1  # the resource's bytes are the chunks its ``extents`` rows list, in order

U64 = struct.Struct(">Q")
_RESOURCE = struct.Struct(">QQBB")
_INODE = struct.Struct(">IIIIQqqqQQQ")
_STAGING = struct.Struct(">QBQB")
_SYNCED = struct.Struct(">Qq")
_CHUNK = struct.Struct(">QQIIBQ")
_EXTENT = struct.Struct(">IQ")
_PACK = struct.Struct(">QQB")
_CHUNKING = struct.Struct(">III")

STAGING_RESERVED = 1  # the upload holds one reference to its expected digest
STAGING_KEEP = 2  # bytes of an open file: recovery commits them (an unfinished put is undone)
STAGING_BASE = 4  # an in-place edit: the file's holes read as its base content (which it holds one reference to)
_BASE = struct.Struct(">32sQ")  # base digest, base length


def u64(value: int) -> bytes:
    return U64.pack(value)


@dataclass
class Resource:
    digest: bytes
    length: int
    refcount: int
    state: int = PENDING
    layout: int = LAYOUT_WHOLE_BLOB

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    def encode(self) -> bytes:
        return _RESOURCE.pack(self.length, self.refcount, self.state, self.layout)

    @classmethod
    def decode(cls, digest: bytes, raw: bytes) -> "Resource":
        length, refcount, state, layout = _RESOURCE.unpack(raw)
        return cls(digest, length, refcount, state, layout)


@dataclass
class Inode:
    """One inode: shared by all the hard links that name it.

    ``content`` is the digest of a regular file's committed content, or None
    for a file created by an upload that has not committed yet. ``target``
    is a symlink's target. ``parent`` is kept for directories only (rename
    must refuse to move a directory into itself). ``space`` is the inode of
    the namespace root (environment, user or global directory) the inode
    lives in: links and renames never cross it.
    """

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int = 1
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    parent: int = 0
    space: int = 0
    content: bytes | None = None
    target: bytes = b""

    @property
    def is_regular(self) -> bool:
        return _is_regular(self.mode)

    def encode(self) -> bytes:
        head = _INODE.pack(
            self.mode, self.uid, self.gid, self.nlink, self.size,
            self.atime_ns, self.mtime_ns, self.ctime_ns, self.rdev, self.parent, self.space,
        )
        return head + (self.content if self.content is not None else self.target)

    @classmethod
    def decode(cls, ino: int, raw: bytes) -> "Inode":
        fields = _INODE.unpack_from(raw)
        tail = bytes(raw[_INODE.size:])
        node = cls(ino, *fields)
        if _is_regular(node.mode):
            node.content = tail or None
        else:
            node.target = tail
        return node


def _is_regular(mode: int) -> bool:
    return (mode & 0o170000) == 0o100000


@dataclass
class StagingRecord:
    """A staging file the catalog knows about, so that recovery can finish or undo it.

    ``parent``/``entry`` name the directory entry the upload created (parent
    0 when it wrote over an existing file); ``reserved`` says that it holds a
    reference to ``expected``. ``base`` (an in-place edit, ``store.edits``):
    the staging file's holes below ``base_length`` read as that content's
    bytes, and the record holds one reference to it.
    """

    name: str
    ino: int
    reserved: bool = False
    expected: bytes | None = None
    parent: int = 0
    entry: bytes = b""
    keep: bool = False
    base: bytes | None = None
    base_length: int = 0

    def encode(self) -> bytes:
        flags = ((STAGING_RESERVED if self.reserved else 0) | (STAGING_KEEP if self.keep else 0)
                 | (STAGING_BASE if self.base is not None else 0))
        expected = self.expected or b""
        base = _BASE.pack(self.base, self.base_length) if self.base is not None else b""
        return _STAGING.pack(self.ino, flags, self.parent, len(expected)) + expected + base + self.entry

    @classmethod
    def decode(cls, name: bytes, raw: bytes) -> "StagingRecord":
        ino, flags, parent, size = _STAGING.unpack_from(raw)
        rest = bytes(raw[_STAGING.size:])
        expected, rest = rest[:size] or None, rest[size:]
        base, base_length = None, 0
        if flags & STAGING_BASE:
            base, base_length = _BASE.unpack_from(rest)
            rest = rest[_BASE.size:]
        return cls(name.decode("ascii"), ino, bool(flags & STAGING_RESERVED), expected, parent, rest,
                   bool(flags & STAGING_KEEP), base, base_length)


@dataclass(frozen=True)
class Synced:
    """What the last fsync of an open file's change made durable: its first ``size`` bytes, as of ``mtime_ns``."""

    size: int
    mtime_ns: int

    def encode(self) -> bytes:
        return _SYNCED.pack(self.size, self.mtime_ns)

    @classmethod
    def decode(cls, raw: bytes) -> "Synced":
        return cls(*_SYNCED.unpack(raw))


@dataclass
class Chunk:
    """One distinct chunk: where its stored bytes are, how they are stored, and how many extents use it.

    ``stored`` bytes at ``offset`` in pack ``pack`` decode (``codec``) to
    ``length`` bytes whose BLAKE3 is ``digest``. ``refcount`` counts every
    use: an extent of ``count`` copies counts ``count`` times.
    """

    digest: bytes
    pack: int
    offset: int
    stored: int
    length: int
    codec: int
    refcount: int = 0

    def encode(self) -> bytes:
        return _CHUNK.pack(self.pack, self.offset, self.stored, self.length, self.codec, self.refcount)

    @classmethod
    def decode(cls, digest: bytes, raw: bytes) -> "Chunk":
        return cls(digest, *_CHUNK.unpack(raw))


@dataclass(frozen=True)
class Extent:
    """A run of ``count`` copies of one chunk (of ``length`` bytes) in a content, ending at offset ``end``.

    Runs keep a sparse file's holes, and any repeated chunk, to one row.
    """

    end: int
    chunk: bytes
    length: int
    count: int = 1

    @property
    def start(self) -> int:
        return self.end - self.length * self.count

    def encode(self) -> bytes:
        return self.chunk + _EXTENT.pack(self.length, self.count)

    @classmethod
    def decode(cls, end: int, raw: bytes) -> "Extent":
        length, count = _EXTENT.unpack_from(raw, 32)
        return cls(end, bytes(raw[:32]), length, count)


@dataclass
class Pack:
    """One pack file: sealed (immutable) or still taking appends, and the stored bytes still live in it.

    ``size`` is the pack's length once sealed (0 while open); it includes
    dead bytes (chunks whose last use went, appends no commit took).
    """

    pack: int
    size: int = 0
    live: int = 0
    sealed: bool = False

    def encode(self) -> bytes:
        return _PACK.pack(self.size, self.live, int(self.sealed))

    @classmethod
    def decode(cls, pack: int, raw: bytes) -> "Pack":
        size, live, sealed = _PACK.unpack(raw)
        return cls(pack, size, live, bool(sealed))


@dataclass(frozen=True)
class Chunking:
    """The FastCDC bounds a store cuts its contents with, fixed when it is made (``meta`` key ``chunking``)."""

    min_size: int
    avg_size: int
    max_size: int

    def encode(self) -> bytes:
        return _CHUNKING.pack(self.min_size, self.avg_size, self.max_size)

    @classmethod
    def decode(cls, raw: bytes) -> "Chunking":
        return cls(*_CHUNKING.unpack(raw))
