"""Extended attributes: ordinary ``user.*``, ``trusted.*`` and ``security.*`` ones, and the store's own.

The store's own (``reserved``): ``user.fusestore.blake3`` shows the
committed content's hash (ENODATA while a change is being written: it would
not be the content's), and ``user.fusestore.expect`` makes the next commit
of a file check its hash (``writes``).

POSIX ACLs are refused with EOPNOTSUPP rather than stored: the kernel would
otherwise believe them enforced, and they are not (permissions are the mode
bits). EOPNOTSUPP, not ENOTSUP's other spellings, is what ``setfacl`` and
``cp -a`` recognise as "this filesystem has no ACLs". SELinux labels are
refused the same way, which also lets ``ls -l`` stop asking once per file.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .. import errors
from ..catalog import Catalog
from .reserved import EXPECT_XATTR, HASH_XATTR, RESERVED_PREFIX
from .writes import Writes

XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
UNSUPPORTED = {
    b"system.posix_acl_access": "POSIX ACLs are not supported; permissions are the mode bits",
    b"system.posix_acl_default": "POSIX ACLs are not supported; permissions are the mode bits",
    b"security.selinux": "SELinux labels are not supported",
}


def _check_name(name: bytes) -> None:
    if name in UNSUPPORTED:
        raise errors.NotSupported(UNSUPPORTED[name])
    if not name or len(name) > XATTR_NAME_MAX:
        raise errors.InvalidArgument(f"extended attribute name of {len(name)} bytes")


def parse_hash_value(value: bytes) -> bytes:
    """A BLAKE3 digest from an xattr value: 64 hex digits, surrounding white space allowed."""
    try:
        digest = bytes.fromhex(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        digest = b""
    if len(digest) != 32:
        raise errors.InvalidArgument(f"{value[:80]!r} is not a BLAKE3 hash (64 hex digits)")
    return digest


class Xattrs:
    def __init__(self, catalog: Catalog, writes: Writes, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.catalog = catalog
        self.writes = writes
        self.now_ns = now_ns

    def get(self, ino: int, name: bytes) -> bytes:
        _check_name(name)
        with self.catalog.read() as tx:
            node = tx.existing_inode(ino)
            value = None if name.startswith(RESERVED_PREFIX) else tx.xattr(ino, name)
        if name == HASH_XATTR:
            if node.content is None or self.writes.is_staged(ino):
                raise errors.NoAttribute("no committed content (being written)")
            return node.content.hex().encode()
        if name == EXPECT_XATTR:
            expected = self.writes.expected(ino)
            if expected is None:
                raise errors.NoAttribute("no expected hash is set")
            return expected.hex().encode()
        if value is None:
            raise errors.NoAttribute(f"no attribute {name!r}")
        return bytes(value)

    def set(self, ino: int, name: bytes, value: bytes) -> None:
        _check_name(name)
        if name == EXPECT_XATTR:
            with self.catalog.read() as tx:
                if not tx.existing_inode(ino).is_regular:
                    raise errors.InvalidArgument("an expected hash is for regular files only")
            self.writes.expect(ino, parse_hash_value(value))
            return
        if name.startswith(RESERVED_PREFIX):
            raise errors.NotPermitted(f"{name.decode(errors='replace')} is the store's own")
        if len(value) > XATTR_SIZE_MAX:
            raise errors.InvalidArgument(f"extended attribute value of {len(value)} bytes")
        with self.catalog.write() as tx:
            node = tx.existing_inode(ino)
            tx.set_xattr(ino, name, value)
            node.ctime_ns = self.now_ns()
            tx.save_inode(node)

    def names(self, ino: int) -> list[bytes]:
        with self.catalog.read() as tx:
            tx.existing_inode(ino)
            return [name for name, _ in tx.xattr_items(ino) if not name.startswith(RESERVED_PREFIX)]

    def remove(self, ino: int, name: bytes) -> None:
        _check_name(name)
        if name == EXPECT_XATTR:
            self.writes.expect(ino, None)
            return
        if name.startswith(RESERVED_PREFIX):
            raise errors.NotPermitted(f"{name.decode(errors='replace')} is the store's own")
        with self.catalog.write() as tx:
            node = tx.existing_inode(ino)
            if not tx.remove_xattr(ino, name):
                raise errors.NoAttribute(f"no attribute {name!r}")
            node.ctime_ns = self.now_ns()
            tx.save_inode(node)
