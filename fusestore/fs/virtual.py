"""Virtual files: subtrees of ``/`` that live in the daemon's memory, not in the catalog.

``/.requests`` and ``/.stats`` are two. Each is a ``VirtualTree``
owning some names in ``/`` and a range of inode numbers far above any
catalog inode, so that the adapter (``fs.operations``) tells virtual from
stored with one routing call (``VirtualFiles``) instead of a comparison
per subtree in every handler.

The rules the router applies to every subtree, so that none restates them:
virtual files are made and removed only through their subtree's ``create``
and ``unlink``; mkdir, mknod, symlink and link into a virtual directory,
rmdir and rename of virtual entries, link, setxattr and removexattr of
virtual inodes are EPERM, and making a name in ``/`` that a subtree owns is
EEXIST; getxattr is ENODATA and listxattr empty. The adapter never lets the
kernel cache them: handles bypass the page cache and attribute timeouts are
0 (they change without the kernel knowing, and may differ per uid).

A subtree produces plain ``Attributes`` and raises ``VirtualError``; it
decides nothing the store owns (who may link where, what content is): it
calls the store like any client.
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pyfuse3

from ..store.attributes import Attributes
from ..store.owners import Owner

VIRTUAL_BASE = 1 << 62  # catalog inode numbers never get this far
RANGE_SIZE = 1 << 48  # inodes per subtree: more than a daemon hands out in its life

__all__ = ["RANGE_SIZE", "VIRTUAL_BASE", "AttributeChange", "VirtualError", "VirtualFiles", "VirtualHandle",
           "VirtualTree", "inode_range"]


def inode_range(slot: int) -> range:
    """The inode numbers of the subtree in ``slot`` (0, 1, ...): each subtree picks its own slot."""
    start = VIRTUAL_BASE + slot * RANGE_SIZE
    return range(start, start + RANGE_SIZE)


class VirtualError(Exception):
    """A refused virtual-file operation: the errno the caller gets, and a reason for logs and tests."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(reason or errno.errorcode.get(code, str(code)))
        self.errno = code


@dataclass(frozen=True)
class AttributeChange:
    """What a setattr asks to change (None: leave it)."""

    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class VirtualHandle(Protocol):
    """An open virtual file. ``release`` is called once, after the last ``flush``."""

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> int: ...

    def flush(self) -> None: ...

    def release(self) -> None: ...


class VirtualTree(ABC):
    """A subtree of ``/``: its names there, the inodes it owns, and the operations routed to it.

    ``parent`` in ``lookup``, ``create`` and ``unlink`` is either
    ``pyfuse3.ROOT_INODE`` with one of ``names``, or one of ``inodes``.
    ``caller`` is who asks (uid and gid of the request). The defaults refuse
    as a read-only file would.
    """

    names: Sequence[bytes]  # its entries in /
    inodes: range  # every inode it hands out, those of its entries in / included

    @abstractmethod
    def lookup(self, parent: int, name: bytes, caller: Owner) -> Attributes: ...

    @abstractmethod
    def getattr(self, ino: int, caller: Owner) -> Attributes: ...

    @abstractmethod
    def open(self, ino: int, flags: int, caller: Owner) -> VirtualHandle: ...

    def listing(self, ino: int, caller: Owner) -> list[tuple[bytes, Attributes]]:
        """The entries of a directory as ``caller`` sees them (opendir); ENOTDIR for a file."""
        raise VirtualError(errno.ENOTDIR)

    def create(self, parent: int, name: bytes, caller: Owner) -> tuple[VirtualHandle, Attributes]:
        """A new file, opened."""
        raise VirtualError(errno.EPERM)

    def unlink(self, parent: int, name: bytes, caller: Owner) -> None:
        raise VirtualError(errno.EPERM)

    def setattr(self, ino: int, change: AttributeChange, caller: Owner) -> Attributes:
        raise VirtualError(errno.EPERM)


class VirtualFiles:
    """The registered subtrees: which owns an inode, which owns a name."""

    def __init__(self, *trees: VirtualTree) -> None:
        self.trees = trees
        self._by_name: dict[bytes, VirtualTree] = {}
        for number, tree in enumerate(trees):
            if tree.inodes.start < VIRTUAL_BASE:
                raise ValueError(f"{type(tree).__name__}: inodes below {VIRTUAL_BASE} are the catalog's")
            for other in trees[:number]:
                if tree.inodes.start < other.inodes.stop and other.inodes.start < tree.inodes.stop:
                    raise ValueError(f"{type(tree).__name__} and {type(other).__name__} share inode numbers")
            for name in tree.names:
                if name in self._by_name:
                    raise ValueError(f"two virtual subtrees are named {name!r}")
                self._by_name[name] = tree

    def by_inode(self, ino: int) -> VirtualTree | None:
        """The subtree that owns ``ino``; None for a catalog inode."""
        if ino < VIRTUAL_BASE:
            return None
        for tree in self.trees:
            if ino in tree.inodes:
                return tree
        return None

    def by_entry(self, parent: int, name: bytes) -> VirtualTree | None:
        """The subtree that owns the entry ``name`` of directory ``parent``; None for a catalog entry."""
        if parent == pyfuse3.ROOT_INODE:
            return self._by_name.get(name)
        return self.by_inode(parent)

    def is_virtual(self, ino: int) -> bool:
        return self.by_inode(ino) is not None

    def root_entries(self, caller: Owner) -> list[tuple[bytes, Attributes]]:
        """What the subtrees add to the listing of ``/``."""
        return [(name, tree.lookup(pyfuse3.ROOT_INODE, name, caller)) for tree in self.trees for name in tree.names]

    def refuse(self, *inodes: int) -> None:
        """EPERM when any of ``inodes`` is virtual (link, xattr writes, ...)."""
        if any(self.is_virtual(ino) for ino in inodes):
            raise VirtualError(errno.EPERM, "virtual files are not linked, moved or given extended attributes")

    def refuse_entries(self, *entries: tuple[int, bytes]) -> None:
        """EPERM when any (parent, name) is a virtual entry (rmdir, rename)."""
        if any(self.by_entry(parent, name) is not None for parent, name in entries):
            raise VirtualError(errno.EPERM, "virtual entries are not removed or moved")

    def refuse_new(self, parent: int, name: bytes) -> None:
        """Before mkdir, mknod, symlink, link: EEXIST over a virtual name in /, EPERM inside a virtual directory."""
        if parent == pyfuse3.ROOT_INODE and name in self._by_name:
            raise VirtualError(errno.EEXIST, f"{name!r} is virtual")
        self.refuse(parent)
