"""What the store tells a front end about an inode: plain values, never a catalog record to change."""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog import Inode


@dataclass(frozen=True)
class Attributes:
    """An inode's attributes as ``stat`` shows them (nlink 0: unlinked while open)."""

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0

    @classmethod
    def of(cls, node: Inode) -> "Attributes":
        return cls(node.ino, node.mode, node.uid, node.gid, max(node.nlink, 0), node.size,
                   node.atime_ns, node.mtime_ns, node.ctime_ns, node.rdev)
