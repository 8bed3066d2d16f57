#!/usr/bin/env python3
"""A bare pyfuse3 passthrough of one directory: the benchmark's ceiling for any Python FUSE filesystem.

    scripts/passthrough.py SOURCE MOUNTPOINT     (runs in the foreground; unmount with fusermount3 -u)

It does per request only what the kernel asked (pread, pwrite, fsync), with
the same long cache timeouts and open flags as fusestore (keep_cache, direct
I/O for write-only handles), so ``scripts/bench.py fs`` can show how far
fusestore is from what pyfuse3 itself allows on this machine.
It is a measuring stick, not a product: no renames, links or xattrs.
"""

from __future__ import annotations

import errno
import os
import sys

import pyfuse3
import trio

from fusestore.fs.kernel import BLOCK_SIZE, CACHE_SECONDS, uses_direct_io

STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
               "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_blocks")


class Passthrough(pyfuse3.Operations):
    def __init__(self, source: str) -> None:
        super().__init__()
        self.paths = {pyfuse3.ROOT_INODE: source}

    def _entry(self, path: str) -> pyfuse3.EntryAttributes:
        info = os.lstat(path)
        attr = pyfuse3.EntryAttributes()
        for name in STAT_FIELDS:
            setattr(attr, name, getattr(info, name))
        attr.st_blksize = BLOCK_SIZE
        attr.entry_timeout = attr.attr_timeout = CACHE_SECONDS
        self.paths[info.st_ino] = path
        return attr

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.paths[inode])

    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = os.path.join(self.paths[parent], os.fsdecode(name))
        if not os.path.lexists(path):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(path)

    async def create(self, parent: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = os.path.join(self.paths[parent], os.fsdecode(name))
        fd = os.open(path, flags | os.O_CREAT, mode)
        return _file_info(fd, flags), self._entry(path)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return _file_info(os.open(self.paths[inode], flags), flags)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    async def fsync(self, fh: int, datasync: bool) -> None:
        os.fsync(fh)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        os.close(fh)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENODATA)


def _file_info(fd: int, flags: int) -> pyfuse3.FileInfo:
    return pyfuse3.FileInfo(fh=fd, keep_cache=True, direct_io=uses_direct_io(flags, os.fstat(fd).st_mode))


def main() -> None:
    source, mountpoint = sys.argv[1], sys.argv[2]
    pyfuse3.init(Passthrough(source), mountpoint, set(pyfuse3.default_options) | {"fsname=passthrough"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    main()
