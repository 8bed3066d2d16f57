#!/usr/bin/env python3
"""A bare pyfuse3 passthrough of one directory: the benchmark's ceiling for any Python FUSE filesystem.

    scripts/passthrough.py SOURCE MOUNTPOINT     (runs in the foreground; unmount with fusermount3 -u)

It does per request only what the kernel asked (one or two syscalls on the
backing directory), with the settings that measured best for it and that
fusestore shares (``fusestore.fs.kernel``): keep_cache, long entry and
attribute timeouts (negative entries too), direct I/O for write-only
handles, no writeback cache, POSIX ACL and SELinux xattrs refused. So
``scripts/bench.py fs`` can show how far fusestore is from what pyfuse3
itself allows on this machine, on every workload, real tools included.

Each inode the kernel knows holds an O_PATH descriptor of its backing file,
as libfuse's passthrough_ll does: renames, hard links and unlinked open
files then need no path bookkeeping. It lives until the kernel's lookups
of it are all forgotten. FUSE inode numbers are the backing ones, with the
backing root's swapped for FUSE's root (1).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import resource
import stat
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusestore.fs.kernel import BLOCK_SIZE, CACHE_SECONDS, NAME_MAX, uses_direct_io  # noqa: E402
from fusestore.store.xattrs import UNSUPPORTED  # noqa: E402

STAT_FIELDS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
               "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blocks")
# The kernel has done their part: the file exists and is no symlink (O_NOFOLLOW on /proc/self/fd/N is ELOOP).
OPEN_ONLY_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_NOFOLLOW
LIBC = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")
P = ParamSpec("P")


def _errno(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The backing syscall's errno goes back to the caller as it is (rm -rf needs ENOTEMPTY, not EIO)."""
    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


class Inode:
    """A backing file the kernel knows: its O_PATH descriptor and how many lookups the kernel holds."""

    __slots__ = ("fd", "lookups")

    def __init__(self, fd: int) -> None:
        self.fd, self.lookups = fd, 0

    @property
    def path(self) -> str:
        """The descriptor as a path, for the calls that take no O_PATH descriptor (it names the file itself)."""
        return f"/proc/self/fd/{self.fd}"


class Listing:
    """An open directory: its descriptor, and its names read at the first readdir (offsets index them)."""

    __slots__ = ("fd", "names")

    def __init__(self, fd: int) -> None:
        self.fd, self.names = fd, list[str]()


class Passthrough(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False  # with it, a GETXATTR before every write(2) and a SETATTR with every unlink
    enable_acl = False

    def __init__(self, source: str) -> None:
        super().__init__()
        root = os.open(source, os.O_PATH | os.O_DIRECTORY)
        self.root_ino = os.stat(root).st_ino
        self.inodes = {pyfuse3.ROOT_INODE: Inode(root)}
        self.dirs: dict[int, Listing] = {}
        self.own = (os.geteuid(), os.getegid())

    def _ino(self, backing: int) -> int:
        """The FUSE number of a backing inode: the backing root and inode 1 trade places."""
        if backing == self.root_ino:
            return pyfuse3.ROOT_INODE
        return self.root_ino if backing == pyfuse3.ROOT_INODE else backing

    def _attributes(self, info: os.stat_result) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        for name in STAT_FIELDS:
            setattr(attr, name, getattr(info, name))
        attr.st_ino = self._ino(info.st_ino)
        attr.st_blksize = BLOCK_SIZE
        attr.entry_timeout = attr.attr_timeout = CACHE_SECONDS
        return attr

    def _entry(self, parent: int, name: str) -> pyfuse3.EntryAttributes:
        """A name's attributes, counted as one more lookup the kernel holds (lookup, create, readdirplus...)."""
        parent_fd = self.inodes[parent].fd
        info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        attr = self._attributes(info)
        self._remember(attr.st_ino, parent_fd, name)
        return attr

    def _remember(self, ino: int, parent_fd: int, name: str) -> None:
        node = self.inodes.get(ino)
        if node is None:
            node = self.inodes[ino] = Inode(os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=parent_fd))
        node.lookups += 1

    def _chown_to_caller(self, parent: int, name: str, ctx: pyfuse3.RequestContext) -> None:
        """A new file belongs to whoever asked for it, not to the daemon (nothing to do when they are the same)."""
        if (ctx.uid, ctx.gid) != self.own:
            os.chown(name, ctx.uid, ctx.gid, dir_fd=self.inodes[parent].fd, follow_symlinks=False)

    # -- lookups and attributes --------------------------------------------------------------

    @_errno
    async def lookup(self, parent_inode: pyfuse3.InodeT, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            return self._entry(parent_inode, os.fsdecode(name))
        except FileNotFoundError:
            missing = pyfuse3.EntryAttributes()  # st_ino 0: the kernel caches the absence for entry_timeout
            missing.entry_timeout = CACHE_SECONDS
            return missing

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        """The last lookup forgotten closes the descriptor, which lets the backing file go if it was unlinked."""
        for ino, count in inode_list:
            node = self.inodes.get(ino)
            if node is None or ino == pyfuse3.ROOT_INODE:
                continue
            node.lookups -= count
            if node.lookups <= 0:
                os.close(self.inodes.pop(ino).fd)

    @_errno
    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(os.stat(self.inodes[inode].fd))

    @_errno
    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: pyfuse3.FileHandleT | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = self.inodes[inode].path
        if fields.update_size:
            if fh is None:
                os.truncate(path, attr.st_size)
            else:
                os.ftruncate(fh, attr.st_size)
        if fields.update_mode:
            os.chmod(path, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1)
        if fields.update_atime or fields.update_mtime:
            now = os.stat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else now.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else now.st_mtime_ns))
        return self._attributes(os.stat(path))

    @_errno
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        return os.fsencode(os.readlink("", dir_fd=self.inodes[inode].fd))

    @_errno
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        disk = os.statvfs(self.inodes[pyfuse3.ROOT_INODE].path)
        data = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail"):
            setattr(data, name, getattr(disk, name))
        data.f_namemax = NAME_MAX
        return data

    # -- creation, removal, renaming -----------------------------------------------------------

    @_errno
    async def create(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = os.fsdecode(name)
        fd = os.open(path, flags | os.O_CREAT, mode, dir_fd=self.inodes[parent_inode].fd)
        self._chown_to_caller(parent_inode, path, ctx)
        attr = self._entry(parent_inode, path)
        return _file_info(fd, flags, attr.st_mode), attr

    @_errno
    async def mknod(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, ctx, lambda path, fd: os.mknod(path, mode, rdev, dir_fd=fd))

    @_errno
    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, ctx, lambda path, fd: os.mkdir(path, mode, dir_fd=fd))

    @_errno
    async def symlink(self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._make(parent_inode, name, ctx, lambda path, fd: os.symlink(target, path, dir_fd=fd))

    def _make(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext,
              make: Callable[[str, int], None]) -> pyfuse3.EntryAttributes:
        """A name ``make(path, directory_fd)`` made, given to the caller, and its entry."""
        path = os.fsdecode(name)
        make(path, self.inodes[parent_inode].fd)
        self._chown_to_caller(parent_inode, path, ctx)
        return self._entry(parent_inode, path)

    @_errno
    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        path = os.fsdecode(new_name)
        os.link(self.inodes[inode].path, path, dst_dir_fd=self.inodes[new_parent_inode].fd, follow_symlinks=True)
        return self._entry(new_parent_inode, path)

    @_errno
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        os.unlink(name, dir_fd=self.inodes[parent_inode].fd)

    @_errno
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        os.rmdir(name, dir_fd=self.inodes[parent_inode].fd)

    @_errno
    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: bytes, parent_inode_new: pyfuse3.InodeT,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        old_fd, new_fd = self.inodes[parent_inode_old].fd, self.inodes[parent_inode_new].fd
        if not flags:
            os.rename(name_old, name_new, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        elif LIBC.renameat2(old_fd, name_old, new_fd, name_new, ctypes.c_uint(flags)) != 0:
            raise OSError(ctypes.get_errno(), "renameat2")  # RENAME_NOREPLACE, RENAME_EXCHANGE: os.rename has none

    # -- files --------------------------------------------------------------------------------

    @_errno
    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes[inode]
        fd = os.open(node.path, flags & ~OPEN_ONLY_FLAGS)
        return _file_info(fd, flags, os.stat(fd).st_mode if flags & os.O_ACCMODE == os.O_WRONLY else 0)

    @_errno
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @_errno
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        return os.pwrite(fh, buf, off)

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        """Nothing to do: the backing file has every write already (a plain close reports nothing more)."""

    @_errno
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        os.close(fh)

    @_errno
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        (os.fdatasync if datasync else os.fsync)(fh)

    # -- directories ---------------------------------------------------------------------------

    @_errno
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.inodes[inode].fd)
        self.dirs[fd] = Listing(fd)
        return pyfuse3.FileHandleT(fd)

    @_errno
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Offsets index the names read at offset 0 (a rewind reads them again): none is skipped or repeated.

        pyfuse3 answers with readdirplus, so every entry the kernel takes counts as a lookup.
        """
        listing = self.dirs[fh]
        if start_id == 0:
            listing.names = os.listdir(fh)
        for offset in range(start_id, len(listing.names)):
            name = listing.names[offset]
            try:
                info = os.stat(name, dir_fd=fh, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the listing was read
            attr = self._attributes(info)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, offset + 1):
                return
            self._remember(attr.st_ino, fh, name)

    @_errno
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        os.close(self.dirs.pop(fh).fd)

    @_errno
    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        os.fsync(fh)

    # -- extended attributes: refused like fusestore's, others passed on --------------------------

    @_errno
    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        _refuse_unsupported(name)
        return os.getxattr(self.inodes[inode].path, name)

    @_errno
    async def setxattr(self, inode: pyfuse3.InodeT, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        _refuse_unsupported(name)
        os.setxattr(self.inodes[inode].path, name, value)

    @_errno
    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [os.fsencode(name) for name in os.listxattr(self.inodes[inode].path)
                if os.fsencode(name) not in UNSUPPORTED]

    @_errno
    async def removexattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        _refuse_unsupported(name)
        os.removexattr(self.inodes[inode].path, name)


def _refuse_unsupported(name: bytes) -> None:
    """POSIX ACLs and SELinux labels: EOPNOTSUPP as fusestore says, which also stops ``ls -l`` asking per file."""
    if name in UNSUPPORTED:
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)


def _file_info(fd: int, flags: int, mode: int) -> pyfuse3.FileInfo:
    """Pages are kept across opens (only this mount changes the files); write-only handles bypass them."""
    return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fd), keep_cache=True, direct_io=uses_direct_io(flags, mode))


def raise_open_files_limit() -> None:
    """One descriptor per inode the kernel knows: 10,000 files need more than the usual soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as limit:
            wanted = int(limit.read())
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root only
    except (OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    source, mountpoint = sys.argv[1], sys.argv[2]
    raise_open_files_limit()
    os.umask(0)  # the kernel has applied the caller's umask to every mode it sends
    pyfuse3.init(Passthrough(source), mountpoint, set(pyfuse3.default_options) | {"fsname=passthrough"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    main()
