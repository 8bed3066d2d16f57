"""The FUSE adapter: pyfuse3 requests in, store calls out, errnos back.

Decisions live in the store (``store.namespace``, ``store.xattrs``,
``store.writes``) and in ``openfiles``; this class translates. Virtual files
(``/.requests``, ``/.stats``) are routed by inode or by
name through ``virtual.VirtualFiles``, in one call per handler; everything
else goes to the store. Every handler runs inside ``_errors``, which turns
the store's typed errors and OSErrors into the errno the caller sees, and
logs anything unexpected instead of letting it end the main loop.

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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from .. import errors
from ..store import Store
from ..store.attributes import Attributes
from ..store.owners import Owner
from ..store.setid import cleared_by_write
from .callers import Caller, supplementary_groups
from .kernel import BLOCK_SIZE, CACHE_SECONDS, NAME_MAX, PID_XATTR, uses_direct_io
from .openfiles import OpenFiles, OpenInode
from .requests_dir import Requests, RequestsDir
from .stats_file import StatsFile
from .virtual import AttributeChange, VirtualError, VirtualFiles, VirtualHandle, VirtualTree

log = logging.getLogger(__name__)

READDIR_BATCH = 1000
INLINE_UNLINK_MAX = 1 << 20  # an unlink releasing at most this much runs on the loop: a thread costs it more

T = TypeVar("T")
P = ParamSpec("P")


def _errors(handler: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except VirtualError as exc:
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
    direct_opener: Caller | None = None  # who opened it, for a direct-I/O handle (see ``callers``)


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

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self.tree = store.namespace
        self.files = OpenFiles(
            store,
            on_dropped=lambda parent, name, inode: pyfuse3.invalidate_entry_async(
                parent, name, deleted=inode, ignore_enoent=True),
        )
        trees: list[VirtualTree] = [StatsFile(store)]
        if store.tenancy.requests != "off":  # off: no /.requests at all, as if the mount never had one
            trees.insert(0, RequestsDir(Requests(store, on_linked=self._linked)))
        self.virtual = VirtualFiles(*trees)
        self._linked_entries: list[tuple[int, bytes]] = []
        self.handles: dict[int, Handle] = {}
        self.virtual_handles: dict[int, VirtualHandle] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        self.background: trio.Nursery | None = None  # where long commits at a release run (the daemon's)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    @staticmethod
    def _owner(ctx: pyfuse3.RequestContext) -> Owner:
        return Owner(ctx.uid, ctx.gid)

    @staticmethod
    def _acting(ctx: pyfuse3.RequestContext) -> Owner:
        """The caller of a control file, with its groups: its writes are checks the daemon makes for it."""
        return Owner(ctx.uid, ctx.gid, supplementary_groups(ctx.pid))

    def stored(self, node: Attributes) -> pyfuse3.EntryAttributes:
        """A catalog inode, with the size and mtime of writes not yet committed."""
        return self.entry(self.files.attributes(node))

    def entry(self, node: Attributes) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 0
        # Virtual files change without the kernel knowing and differ per uid: never cache them.
        timeout = 0 if self.virtual.is_virtual(node.ino) else CACHE_SECONDS
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
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        virtual = self.virtual.by_entry(parent_inode, name)
        if virtual is not None:
            return self.entry(virtual.lookup(parent_inode, name, self._owner(ctx)))
        return self.stored(self.tree.lookup(parent_inode, name))

    @_errors
    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        virtual = self.virtual.by_inode(inode)
        if virtual is not None:
            return self.entry(virtual.getattr(inode, self._owner(ctx)))
        return self.stored(self.tree.getattr(inode))

    @_errors
    async def setattr(
        self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None, ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        change = AttributeChange(
            size=attr.st_size if fields.update_size else None,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        virtual = self.virtual.by_inode(inode)
        if virtual is not None:
            return self.entry(virtual.setattr(inode, change, self._owner(ctx)))
        if change.size is not None:
            await self._truncate(inode, change.size)  # O_TRUNC arrives here too: no "wrote" mark
        state = self.files.get(inode)
        if state is None or change.mtime_ns is None:
            node = self.tree.setattr(inode, mode=change.mode, uid=change.uid, gid=change.gid,
                                     atime_ns=change.atime_ns, mtime_ns=change.mtime_ns)
        else:
            async with state.lock:  # not during a commit (at release, after close returned): it would undo this time
                node = self.tree.setattr(inode, mode=change.mode, uid=change.uid, gid=change.gid,
                                         atime_ns=change.atime_ns, mtime_ns=change.mtime_ns)
                self.files.set_mtime(state, change.mtime_ns)
        if state is not None:
            state.setid = bool(cleared_by_write(node.mode))
        return self.stored(node)

    async def _truncate(self, inode: pyfuse3.InodeT, size: int) -> None:
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
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        if self.virtual.is_virtual(inode):
            raise pyfuse3.FUSEError(errno.EINVAL)  # no virtual symlinks
        return self.tree.readlink(inode)

    # -- creation ---------------------------------------------------------------------

    def _log_refusal(self, parent: int, name: bytes, exc: errors.StoreError) -> None:
        if parent == pyfuse3.ROOT_INODE:
            log.warning("refused %r in /: %s", name, exc)

    @_errors
    async def mkdir(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.virtual.refuse_new(parent_inode, name)
        try:
            return self.stored(self.tree.mkdir(parent_inode, name, mode, self._owner(ctx)))
        except errors.StoreError as exc:
            self._log_refusal(parent_inode, name, exc)
            raise

    @_errors
    async def mknod(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.virtual.refuse_new(parent_inode, name)
        return self.stored(self.tree.mknod(parent_inode, name, mode, rdev, self._owner(ctx)))

    @_errors
    async def symlink(
        self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.virtual.refuse_new(parent_inode, name)
        return self.stored(self.tree.symlink(parent_inode, name, target, self._owner(ctx)))

    @_errors
    async def link(
        self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self.virtual.refuse(inode)
        self.virtual.refuse_new(new_parent_inode, new_name)
        return self.stored(self.tree.link(inode, new_parent_inode, new_name))

    @_errors
    async def create(
        self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        virtual = self.virtual.by_entry(parent_inode, name)
        if virtual is not None:
            handle, attributes = virtual.create(parent_inode, name, self._acting(ctx))
            return self._open_virtual(handle), self.entry(attributes)
        node, staged = self.tree.create(parent_inode, name, mode, self._owner(ctx))
        fh = self._new_fh()
        self.handles[fh] = created = Handle(self.files.created(node.ino, staged))
        return self._file_info(fh, created, flags, node.mode, ctx), self.stored(node)

    # -- removal and renaming -----------------------------------------------------------

    @_errors
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        virtual = self.virtual.by_entry(parent_inode, name)
        if virtual is not None:
            virtual.unlink(parent_inode, name, self._owner(ctx))
            return
        if self.tree.lookup(parent_inode, name).size <= INLINE_UNLINK_MAX:
            self.tree.unlink(parent_inode, name)
        else:  # its last name may release many chunks
            await trio.to_thread.run_sync(self.tree.unlink, parent_inode, name)

    @_errors
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.virtual.refuse_entries((parent_inode, name))
        self.tree.rmdir(parent_inode, name)

    @_errors
    async def rename(
        self, parent_inode_old: pyfuse3.InodeT, name_old: bytes, parent_inode_new: pyfuse3.InodeT, name_new: bytes,
        flags: int, ctx: pyfuse3.RequestContext,
    ) -> None:
        self.virtual.refuse_entries((parent_inode_old, name_old), (parent_inode_new, name_new))
        await trio.to_thread.run_sync(
            self.tree.rename, parent_inode_old, name_old, parent_inode_new, name_new, flags
        )

    # -- extended attributes --------------------------------------------------------------

    @_errors
    async def setxattr(self, inode: pyfuse3.InodeT, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.virtual.refuse(inode)
        self.store.xattrs.set(inode, name, value)

    @_errors
    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if self.virtual.is_virtual(inode):
            raise pyfuse3.FUSEError(errno.ENODATA)
        if name == PID_XATTR and inode == pyfuse3.ROOT_INODE:
            return str(os.getpid()).encode()
        return self.store.xattrs.get(inode, name)

    @_errors
    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if self.virtual.is_virtual(inode):
            return []
        return self.store.xattrs.names(inode)

    @_errors
    async def removexattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.virtual.refuse(inode)
        self.store.xattrs.remove(inode, name)

    # -- files ----------------------------------------------------------------------------------

    def _file_info(self, fh: int, handle: Handle, flags: int, mode: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """The kernel keeps its page cache across opens, since content changes only through us."""
        direct = uses_direct_io(flags, mode)
        handle.state.setid = bool(cleared_by_write(mode))
        if direct:
            handle.direct_opener = Caller(ctx.uid, ctx.pid)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=direct)

    def _clear_setid(self, state: OpenInode) -> None:
        """A write or truncation by a caller without CAP_FSETID: the kernel's cached mode goes too."""
        state.setid = False
        if self.tree.clear_setid(state.ino) is not None:
            try:
                pyfuse3.invalidate_inode(pyfuse3.InodeT(state.ino), attr_only=True)
            except OSError:
                pass  # the kernel did not know the inode: nothing cached

    def _open_virtual(self, handle: VirtualHandle) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self.virtual_handles[fh] = handle
        return pyfuse3.FileInfo(fh=fh, direct_io=True)  # every read is fresh

    @_errors
    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        virtual = self.virtual.by_inode(inode)
        if virtual is not None:
            return self._open_virtual(virtual.open(inode, flags, self._acting(ctx)))
        node = self.tree.getattr(inode)
        if stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = self._new_fh()
        self.handles[fh] = handle = Handle(self.files.open(inode))
        info = self._file_info(fh, handle, flags, node.mode, ctx)
        state = handle.state
        try:
            if flags & os.O_TRUNC:
                # libfuse negotiates atomic O_TRUNC, so the truncation arrives
                # here, not as a setattr. It does not mark the handle as having
                # written: the shell's `cmd > f` flushes before cmd writes.
                if state.setid and not Caller(ctx.uid, ctx.pid).has_fsetid:
                    self._clear_setid(state)
                await self.files.truncate(state, 0)
            elif stat.S_ISREG(node.mode):
                await self.files.check(state)
        except BaseException:
            await self.files.close(self.handles.pop(info.fh).state)
            raise
        return info

    @_errors
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        if fh in self.virtual_handles:
            return self.virtual_handles[fh].read(off, size)
        return await self.files.read(self.handles[fh].state, off, size)

    @_errors
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        if fh in self.virtual_handles:
            # Quick (a control file reads at most 64 KiB of a blob): kept on the loop, where the registry lives.
            try:
                return self.virtual_handles[fh].write(off, buf)
            finally:
                await self._drop_linked_entries()
        handle = self.handles[fh]
        handle.wrote = True
        opener = handle.direct_opener
        if handle.state.setid and opener is not None and not opener.has_fsetid:
            self._clear_setid(handle.state)
        return await self.files.write(handle.state, off, buf)

    @_errors
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        """Commit at the flush of the last handle, so that close() reports the commit's errors.

        Only a handle that wrote commits here: the shell's ``cmd > f`` opens
        with O_TRUNC and flushes its own descriptor before the command writes
        a byte, and that flush must not commit (nor consume what belongs to
        the real commit). Whatever is still dirty is committed at release.
        """
        if fh in self.virtual_handles:
            self.virtual_handles[fh].flush()
            return
        handle = self.handles[fh]
        if handle.wrote and handle.state.dirty and handle.state.handles == 1:
            handle.wrote = False
            await self.files.commit(handle.state)

    @_errors
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        if fh in self.virtual_handles:
            self.virtual_handles.pop(fh).release()
            return
        handle = self.handles.pop(fh)
        if self.background is not None and self.files.is_long_close(handle.state):
            # Answered at once: the kernel has 12 slots for background requests (releases, readahead,
            # async direct I/O) for the whole mount, and 12 huge files closed would stall every reader.
            # Nobody waits for a release's answer anyway; the commit goes on, and logs its errors.
            self.background.start_soon(self._close_in_background, handle.state)
            return
        await self.files.close(handle.state)

    async def _close_in_background(self, state: OpenInode) -> None:
        try:
            await self.files.close(state, background=True)
        except errors.StoreError as exc:
            log.warning("the commit of inode %d at its last release failed: %s", state.ino, exc)
        except Exception:
            log.exception("the commit of inode %d at its last release failed", state.ino)

    @_errors
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        if fh in self.virtual_handles:
            return  # nothing of a virtual file is stored
        await self.files.fsync(self.handles[fh].state)

    # -- directories ------------------------------------------------------------------------

    @_errors
    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        virtual = self.virtual.by_inode(inode)
        if virtual is not None:
            listing = DirHandle(inode, virtual.listing(inode, self._owner(ctx)), catalog=False)
        else:
            if not stat.S_ISDIR(self.tree.getattr(inode).mode):
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            root = inode == pyfuse3.ROOT_INODE
            listing = DirHandle(inode, self.virtual.root_entries(self._owner(ctx)) if root else [])
        fh = self._new_fh()
        self.dirs[fh] = listing
        return fh

    @_errors
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
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
            name, stored = listing.batch[index]
            if not pyfuse3.readdir_reply(token, name, self.stored(stored), offset + 1):
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
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        del self.dirs[fh]

    @_errors
    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
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
        """A proof-of-access link changed a file behind the kernel's back: drop what it cached.

        The entry is dropped by ``_drop_linked_entries`` before the answer's
        write returns: the name may now be another inode (a symlink was
        replaced), and the client's next lookup must find the new one.
        """
        try:
            parent, name, inode = self.store.locate_for_environment(env, path)
        except errors.StoreError:
            return
        self.files.forget_content(inode)
        self._linked_entries.append((parent, name))
        try:
            pyfuse3.invalidate_inode(inode, attr_only=False)
        except OSError:
            pass  # the kernel did not know the inode: nothing cached

    async def _drop_linked_entries(self) -> None:
        """Make the kernel forget the entries links replaced, waiting until it has.

        In a worker thread: the kernel may first wait for an operation on the
        same directory that the event loop has still to answer.
        """
        while self._linked_entries:
            parent, name = self._linked_entries.pop()
            try:
                await trio.to_thread.run_sync(pyfuse3.invalidate_entry, parent, name)
            except FileNotFoundError:
                pass  # the kernel did not know the entry: nothing cached

    async def commit_all(self) -> None:
        """At unmount: commit every inode still dirty (handles the kernel never released)."""
        for state in list(self.files.inodes.values()):
            if state.dirty:
                try:
                    await self.files.commit(state)
                except Exception:
                    log.exception("could not commit inode %d at unmount", state.ino)
