"""The FUSE adapter: pyfuse3 requests in, store calls out, errnos back.

Decisions live in the store (``namespace.Tree``) and in ``openfiles``; this
class translates. Every handler runs inside ``_errors``, which turns the
store's typed errors and OSErrors into the errno the caller sees, and logs
anything unexpected instead of letting it end the main loop.

Kernel caching: attributes and entries are cached for ``CACHE_SECONDS``
and file pages are kept across opens (``keep_cache``), since blobs never
change. That is safe because every change reaches us through the kernel,
which updates its own caches; a change the kernel did not make (a
proof-of-access link) must be invalidated explicitly.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from .. import errors
from ..catalog import ROOT_INO
from ..store import Store
from ..store.attributes import Attributes
from ..store.owners import Owner
from .kernel import BLOCK_SIZE, CACHE_SECONDS, NAME_MAX, PID_XATTR, uses_direct_io
from .openfiles import OpenFiles, OpenInode
from .requests_dir import REQUESTS_DIR, REQUESTS_INO, ControlError, ControlFile, Requests

log = logging.getLogger(__name__)

READDIR_BATCH = 1000

T = TypeVar("T")
P = ParamSpec("P")


def _errors(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except ControlError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except errors.StoreError as exc:
            log.debug("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            log.warning("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class Handle:
    state: OpenInode
    wrote: bool = False


@dataclass
class DirHandle:
    """A directory being listed: virtual entries first, then catalog entries a batch at a time."""

    ino: int
    virtual: list[tuple[bytes, Attributes]] = field(default_factory=list)
    catalog: bool = True
    base: int = 0  # catalog offset of batch[0]
    batch: list[tuple[bytes, Attributes]] = field(default_factory=list)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, store: Store, *, max_requests_per_user: int = 100) -> None:
        super().__init__()
        self.store = store
        self.tree = store.namespace
        self.files = OpenFiles(
            store,
            on_dropped=lambda parent, name, inode: pyfuse3.invalidate_entry_async(
                parent, name, deleted=inode, ignore_enoent=True),
        )
        self.requests = Requests(store, max_per_user=max_requests_per_user, on_linked=self._linked)
        self.handles: dict[int, Handle] = {}
        self.control_handles: dict[int, ControlFile] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        now = time.time_ns()
        self.requests_dir = Attributes(REQUESTS_INO, stat.S_IFDIR | 0o1777, 0, 0, nlink=2, size=0,
                                  atime_ns=now, mtime_ns=now, ctime_ns=now)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def entry(self, node: Attributes) -> pyfuse3.EntryAttributes:
        node = self.files.attributes(node)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 0
        # Control files change without the kernel knowing and differ per uid: never cache them.
        timeout = 0 if node.ino >= REQUESTS_INO else CACHE_SECONDS
        attr.entry_timeout = timeout
        attr.attr_timeout = timeout
        attr.st_mode = node.mode
        attr.st_nlink = max(node.nlink, 0)
        attr.st_uid = node.uid
        attr.st_gid = node.gid
        attr.st_rdev = node.rdev
        attr.st_size = node.size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (node.size + 511) // 512
        attr.st_atime_ns = node.atime_ns
        attr.st_mtime_ns = node.mtime_ns
        attr.st_ctime_ns = node.ctime_ns
        return attr

    # -- lookups and attributes -------------------------------------------------

    @_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_INO and name == REQUESTS_DIR:
            return self.entry(self.requests_dir)
        if parent_inode == REQUESTS_INO:
            return self.entry(self._control_inode(self.requests.lookup(ctx.uid, name)))
        return self.entry(self.tree.lookup(parent_inode, name))

    @_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(self._virtual_or_catalog(inode))

    def _virtual_or_catalog(self, inode: int) -> Attributes:
        if inode == REQUESTS_INO:
            return self.requests_dir
        if inode > REQUESTS_INO:
            return self._control_inode(self._control(inode))
        return self.tree.getattr(inode)

    def _control(self, inode: int) -> ControlFile:
        control = self.requests.by_ino.get(inode)
        if control is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return control

    def _control_inode(self, control: ControlFile) -> Attributes:
        return Attributes(control.ino, stat.S_IFREG | 0o600, control.uid, control.gid, nlink=1,
                     size=len(self.requests.render(control)), atime_ns=control.created_ns,
                     mtime_ns=control.created_ns, ctime_ns=control.created_ns)

    @staticmethod
    def _refuse_virtual(*inodes: int) -> None:
        """Nothing but control files is made, linked or moved in /.requests."""
        if any(inode >= REQUESTS_INO for inode in inodes):
            raise pyfuse3.FUSEError(errno.EPERM)

    @_errors
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
        fh: int | None, ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if inode > REQUESTS_INO:  # a control file: truncation is how shells open it; the rest is fixed
            if fields.update_mode or fields.update_uid or fields.update_gid:
                raise pyfuse3.FUSEError(errno.EPERM)
            return self.entry(self._control_inode(self._control(inode)))
        self._refuse_virtual(inode)
        if fields.update_size:
            await self._truncate(inode, attr.st_size)  # O_TRUNC arrives here too: no "wrote" mark
        node = self.tree.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        state = self.files.get(inode)
        if state is not None and fields.update_mtime:
            self.files.set_mtime(state, attr.st_mtime_ns)
        return self.entry(node)

    async def _truncate(self, inode: int, size: int) -> None:
        """ftruncate/truncate/O_TRUNC: on the open inode, or as a commit of its own."""
        mode = self.tree.getattr(inode).mode
        if not stat.S_ISREG(mode):
            raise pyfuse3.FUSEError(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL)
        state = self.files.open(inode)
        try:
            await self.files.truncate(state, size)
        finally:
            if state.handles == 1:
                await self.files.close(state)  # no handle open: commit now
            else:
                state.handles -= 1

    @_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.tree.readlink(inode)

    # -- creation ---------------------------------------------------------------------

    @staticmethod
    def _owner(ctx: pyfuse3.RequestContext) -> Owner:
        return Owner(ctx.uid, ctx.gid)

    def _log_refusal(self, parent: int, name: bytes, exc: errors.StoreError) -> None:
        if parent == ROOT_INO:
            log.warning("refused %r in /: %s", name, exc)

    @_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT_INO and name == REQUESTS_DIR:
            raise pyfuse3.FUSEError(errno.EEXIST)
        self._refuse_virtual(parent_inode)
        try:
            return self.entry(self.tree.mkdir(parent_inode, name, mode, self._owner(ctx)))
        except errors.StoreError as exc:
            self._log_refusal(parent_inode, name, exc)
            raise

    @_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._refuse_virtual(parent_inode)
        return self.entry(self.tree.mknod(parent_inode, name, mode, rdev, self._owner(ctx)))

    @_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._refuse_virtual(parent_inode)
        return self.entry(self.tree.symlink(parent_inode, name, target, self._owner(ctx)))

    @_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._refuse_virtual(inode, new_parent_inode)
        return self.entry(self.tree.link(inode, new_parent_inode, new_name))

    @_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if parent_inode == REQUESTS_INO:
            control = self.requests.create(ctx.uid, ctx.gid, name)
            return self._open_control(control), self.entry(self._control_inode(control))
        self._refuse_virtual(parent_inode)
        node, staged = self.tree.create(parent_inode, name, mode, self._owner(ctx))
        fh = self._new_fh()
        self.handles[fh] = Handle(self.files.created(node.ino, staged))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=uses_direct_io(flags)), self.entry(node)

    # -- removal and renaming -----------------------------------------------------------

    @_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if parent_inode == REQUESTS_INO:
            self.requests.remove(ctx.uid, name)
            return
        await trio.to_thread.run_sync(self.tree.unlink, parent_inode, name)

    @_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if parent_inode == ROOT_INO and name == REQUESTS_DIR:
            raise pyfuse3.FUSEError(errno.EPERM)
        self._refuse_virtual(parent_inode)
        self.tree.rmdir(parent_inode, name)

    @_errors
    async def rename(
        self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
        flags: int, ctx: pyfuse3.RequestContext,
    ) -> None:
        self._refuse_virtual(parent_inode_old, parent_inode_new)
        await trio.to_thread.run_sync(
            self.tree.rename, parent_inode_old, name_old, parent_inode_new, name_new, flags
        )

    # -- extended attributes --------------------------------------------------------------

    @_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse_virtual(inode)
        self.store.xattrs.set(inode, name, value)

    @_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if inode >= REQUESTS_INO:
            raise pyfuse3.FUSEError(errno.ENODATA)
        if name == PID_XATTR and inode == pyfuse3.ROOT_INODE:
            return str(os.getpid()).encode()
        return self.store.xattrs.get(inode, name)

    @_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if inode >= REQUESTS_INO:
            return []
        return self.store.xattrs.names(inode)

    @_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse_virtual(inode)
        self.store.xattrs.remove(inode, name)

    # -- files ----------------------------------------------------------------------------------

    def _open_handle(self, inode: int, flags: int) -> pyfuse3.FileInfo:
        """A handle; the kernel keeps its page cache across opens, since content changes only through us."""
        fh = self._new_fh()
        self.handles[fh] = Handle(self.files.open(inode))
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=uses_direct_io(flags))

    def _open_control(self, control: ControlFile) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        control.handles += 1
        self.control_handles[fh] = control
        return pyfuse3.FileInfo(fh=fh, direct_io=True)  # every read is fresh

    @_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode > REQUESTS_INO:
            control = self._control(inode)
            if control.uid != ctx.uid:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._open_control(control)
        self._refuse_virtual(inode)
        node = self.tree.getattr(inode)
        if stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        info = self._open_handle(inode, flags)
        if flags & os.O_TRUNC:
            # libfuse negotiates atomic O_TRUNC, so the truncation arrives
            # here, not as a setattr. It does not mark the handle as having
            # written: the shell's `cmd > f` flushes before cmd writes.
            try:
                await self.files.truncate(self.handles[info.fh].state, 0)
            except BaseException:
                await self.files.close(self.handles.pop(info.fh).state)
                raise
        return info

    @_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        if fh in self.control_handles:
            return self.requests.render(self.control_handles[fh])[off:off + size]
        return await self.files.read(self.handles[fh].state, off, size)

    @_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if fh in self.control_handles:
            # Quick (at most 64 KiB of a blob is read): kept on the loop, where the registry lives.
            return self.requests.write(self.control_handles[fh], buf)
        handle = self.handles[fh]
        handle.wrote = True
        return await self.files.write(handle.state, off, buf)

    @_errors
    async def flush(self, fh: int) -> None:
        """Commit at the flush of the last handle, so that close() reports the commit's errors.

        Only a handle that wrote commits here: the shell's ``cmd > f`` opens
        with O_TRUNC and flushes its own descriptor before the command writes
        a byte, and that flush must not commit (nor consume what belongs to
        the real commit). Whatever is still dirty is committed at release.
        """
        if fh in self.control_handles:
            return
        handle = self.handles[fh]
        if handle.wrote and handle.state.dirty and handle.state.handles == 1:
            handle.wrote = False
            await self.files.commit(handle.state)

    @_errors
    async def release(self, fh: int) -> None:
        if fh in self.control_handles:
            self.requests.closed(self.control_handles.pop(fh))
            return
        handle = self.handles.pop(fh)
        await self.files.close(handle.state)

    @_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        if fh in self.control_handles:
            return
        await self.files.fsync(self.handles[fh].state)

    # -- directories ------------------------------------------------------------------------

    @_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if inode == REQUESTS_INO:  # each uid lists its own requests only
            controls = self.requests.listing(ctx.uid)
            listing = DirHandle(inode, [(c.name, self._control_inode(c)) for c in controls], catalog=False)
        else:
            if not stat.S_ISDIR(self._virtual_or_catalog(inode).mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            virtual = [(REQUESTS_DIR, self.requests_dir)] if inode == ROOT_INO else []
            listing = DirHandle(inode, virtual)
        fh = self._new_fh()
        self.dirs[fh] = listing
        return fh

    @_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.dirs[fh]
        offset = start_id
        while offset < len(listing.virtual):
            name, node = listing.virtual[offset]
            if not pyfuse3.readdir_reply(token, name, self.entry(node), offset + 1):
                return
            offset += 1
        if not listing.catalog:
            return
        first = len(listing.virtual)  # readdir offsets count the virtual entries, batches do not
        while True:
            index = offset - first - listing.base
            if not 0 <= index < len(listing.batch):
                if not self._load_batch(listing, offset - first):
                    return
                index = 0
            name, node = listing.batch[index]
            if not pyfuse3.readdir_reply(token, name, self.entry(node), offset + 1):
                return
            offset += 1

    def _load_batch(self, listing: DirHandle, offset: int) -> bool:
        """Load the batch that starts at ``offset``; False at the end of the directory."""
        if offset == listing.base + len(listing.batch) and listing.batch:
            after = listing.batch[-1][0]
        else:  # a rewind or a seek: walk from the start (rare)
            after, skipped = b"", 0
            while skipped < offset:
                step = self.tree.readdir(listing.ino, after, min(READDIR_BATCH, offset - skipped))
                if not step:
                    return False
                after = step[-1][0]
                skipped += len(step)
        listing.batch = self.tree.readdir(listing.ino, after, READDIR_BATCH)
        listing.base = offset
        return bool(listing.batch)

    @_errors
    async def releasedir(self, fh: int) -> None:
        del self.dirs[fh]

    @_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await trio.to_thread.run_sync(self.store.sync)

    # -- the filesystem as a whole ---------------------------------------------------------------

    @_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        disk = os.statvfs(self.store.path)
        data = pyfuse3.StatvfsData()
        data.f_bsize = disk.f_bsize
        data.f_frsize = disk.f_frsize
        data.f_blocks = disk.f_blocks
        data.f_bfree = disk.f_bfree
        data.f_bavail = disk.f_bavail
        data.f_files = disk.f_files
        data.f_ffree = disk.f_ffree
        data.f_favail = disk.f_favail
        data.f_namemax = NAME_MAX
        return data

    def _linked(self, env: str, path: str) -> None:
        """A proof-of-access link changed a file behind the kernel's back: drop what it cached."""
        try:
            parent, name, inode = self.store.locate_for_environment(env, path)
        except errors.StoreError:
            return
        self.files.forget_content(inode)
        pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        try:
            pyfuse3.invalidate_inode(inode, attr_only=False)
        except OSError:
            pass  # the kernel did not know the inode: nothing cached

    async def commit_all(self) -> None:
        """At unmount: commit every inode still dirty (handles the kernel never released)."""
        for state in list(self.files.inodes.values()):
            if state.dirty:
                try:
                    await self.files.commit(state)
                except Exception:
                    log.exception("could not commit inode %d at unmount", state.ino)
