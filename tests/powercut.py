"""A power-loss simulator: a FUSE filesystem that keeps unsynced writes in memory and loses them on a cut.

    python -m tests.powercut BACKING MOUNTPOINT [--seed N] [--keep P]

runs in the foreground until a signal: SIGUSR1 is a power cut, SIGTERM a
clean shutdown (everything made durable, as an unmount with a final sync).
Either way the process writes the durable state to BACKING, unmounts and
exits. The next instance (or any program) finds in BACKING exactly what
survived.

What is modelled
----------------
BACKING is a real directory holding the durable state. At start it is read
into memory as the *durable image*; the *live image*, which every request
sees at once, starts as a copy of it. Every change is made to the live image
and noted as pending:

- data: 4 KiB pages of a file, and its size;
- directory entries, one metadata operation each: link (create, mkdir,
  symlink, link), unlink (unlink, rmdir) and rename (atomic: the old name
  goes and the new one comes together, replacing a target).

``fsync``/``fdatasync`` of a file makes its pending pages and its size
durable (the two are treated alike; as on ext4, the size is part of the
file's data). It does not make its name durable: ``fsyncdir`` of a
directory does that, for every pending operation on an entry of that
directory (a rename counts for both directories). Operations on the same
entry keep their order: making one durable makes every earlier one on that
entry durable with it (and, transitively, every earlier one on the entries
those touch), so the durable tree is always one the operations' partial
order allows, never, say, an unlink applied before the create it undoes.

A power cut keeps a random subset of the pending pages of each file (each
with probability P, default 0.5) and of the pending metadata operations
(closed under the order above), and drops the rest. Since any subset may
survive, not just a prefix, this models the reordering of a disk's write
cache and of writeback: a later write may reach the disk while an earlier
one does not. A file's pending size survives with probability P; otherwise
its durable size grows only to cover the pages that survived past it (as
ext4's on-disk size follows written data), so a dropped page below a
surviving one reads as zeros, as a hole would. One surviving page in ten
is torn: each of its 512-byte sectors is the new one or the old one, as a
disk that loses power in the middle of writing a page leaves it.

What is not modelled
--------------------
- syncfs/sync: they never reach a FUSE daemon (the kernel has no request
  for them), so they make nothing durable here, as on any FUSE filesystem.
- ext4's stronger practice (a journal commit makes every earlier metadata
  operation durable; fsync of a new file makes its name durable): this
  is the POSIX minimum, stricter than ext4.
- attributes (mode, owner, times) and extended attributes: durable at once.
- lying disks, read errors, and writes through a shared
  writable mmap that the kernel has not yet written back (lost at the cut).
- inode numbers are the simulator's own; ``forget`` frees nothing until exit.
"""

from __future__ import annotations

import argparse
import copy
import errno
import os
import random
import shutil
import signal
import stat
import sys
import time
from dataclasses import dataclass, field

import pyfuse3
import trio

PAGE = 4096
SECTOR = 512  # what a disk writes atomically
TORN = 0.1  # the share of surviving pages a cut tears
TIMEOUT = 60.0  # the kernel may cache entries and attributes: every change comes through this process

Key = tuple[int, bytes]  # (directory inode, entry name)


@dataclass
class Node:
    """An inode: a directory's entries, a file's pages and size, or a symlink's target."""

    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)
    entries: dict[bytes, int] = field(default_factory=dict)
    pages: dict[int, bytes] = field(default_factory=dict)  # page index -> PAGE bytes; missing pages are zeros
    size: int = 0
    target: bytes = b""
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    nlink: int = 0  # live image only

    def copy(self) -> "Node":
        twin = copy.copy(self)
        twin.entries, twin.pages, twin.xattrs = dict(self.entries), dict(self.pages), dict(self.xattrs)
        return twin

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        out = bytearray()
        for index in range(offset // PAGE, (end + PAGE - 1) // PAGE):
            out += self.pages.get(index, bytes(PAGE))
        start = offset - (offset // PAGE) * PAGE
        return bytes(out[start:start + max(0, end - offset)])

    def resize(self, size: int) -> set[int]:
        """Truncate or extend; returns the pages that changed (dropped ones, a zeroed tail)."""
        changed = {index for index in self.pages if index * PAGE >= size}
        for index in changed:
            del self.pages[index]
        tail = size % PAGE
        if size < self.size and tail and size // PAGE in self.pages:
            page = self.pages[size // PAGE]
            self.pages[size // PAGE] = page[:tail] + bytes(PAGE - tail)
            changed.add(size // PAGE)
        self.size = size
        return changed


@dataclass
class Op:
    """A pending metadata operation: ``new`` names ``ino`` at ``dst``, and ``src`` stops naming it."""

    seq: int
    ino: int
    src: Key | None  # unlink, the old name of a rename
    dst: Key | None  # link, the new name of a rename

    @property
    def keys(self) -> set[Key]:
        return {key for key in (self.src, self.dst) if key is not None}


class PowerCut(pyfuse3.Operations):
    def __init__(self, backing: str, rng: random.Random, keep: float) -> None:
        super().__init__()
        self.backing, self.rng, self.keep = backing, rng, keep
        self.durable: dict[int, Node] = {}
        self.live: dict[int, Node] = {}
        self.born: dict[int, Node] = {}  # a new inode as created: what its first durable name brings
        self.ops: list[Op] = []
        self.dirty: dict[int, set[int]] = {}  # ino -> pages written since its last fsync
        self.seq = 0
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self._load()
        self.stats = {"fsync": 0, "fsyncdir": 0}

    # -- the durable image: BACKING ------------------------------------------------------------

    def _load(self) -> None:
        seen: dict[int, int] = {}  # BACKING's inode numbers -> ours, for hard links
        root = os.lstat(self.backing)
        self.durable[pyfuse3.ROOT_INODE] = Node(root.st_mode, root.st_uid, root.st_gid, root.st_mtime_ns)
        stack = [(self.backing, pyfuse3.ROOT_INODE)]
        while stack:
            path, ino = stack.pop()
            for entry in os.scandir(path):
                info = entry.stat(follow_symlinks=False)
                child = seen.get(info.st_ino)
                if child is None:
                    child = seen[info.st_ino] = self._new_ino()
                    node = self.durable[child] = Node(info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, child))
                    elif entry.is_symlink():
                        node.target = os.fsencode(os.readlink(entry.path))
                    else:
                        with open(entry.path, "rb") as f:
                            data = f.read()
                        node.size = len(data)
                        chunks = ((i // PAGE, data[i:i + PAGE]) for i in range(0, len(data), PAGE))
                        node.pages = {index: chunk.ljust(PAGE, b"\0") for index, chunk in chunks if chunk.strip(b"\0")}
                self.durable[ino].entries[os.fsencode(entry.name)] = child
        for ino, node in self.durable.items():
            self.live[ino] = node.copy()
        for node in self.live.values():
            node.nlink += stat.S_ISDIR(node.mode)  # its "."
            for child in node.entries.values():
                self.live[child].nlink += 1
                node.nlink += stat.S_ISDIR(self.live[child].mode)  # the child's ".."
        self.live[pyfuse3.ROOT_INODE].nlink += 1  # the root's own entry, as it were

    def _save(self) -> None:
        """Replace BACKING's content with the durable image (what is reachable from the root)."""
        for name in os.listdir(self.backing):
            path = os.path.join(self.backing, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        written: dict[int, str] = {}
        stack = [(self.backing, pyfuse3.ROOT_INODE)]
        while stack:
            path, ino = stack.pop()
            for name, child in self.durable[ino].entries.items():
                node, target = self.durable[child], os.path.join(path, os.fsdecode(name))
                if child in written:
                    os.link(written[child], target)
                    continue
                written[child] = target
                if stat.S_ISDIR(node.mode):
                    os.mkdir(target)
                    stack.append((target, child))
                elif stat.S_ISLNK(node.mode):
                    os.symlink(node.target, target)
                    continue
                else:
                    with open(target, "wb") as f:
                        f.write(node.read(0, node.size))
                os.chmod(target, stat.S_IMODE(node.mode))
                for key, value in node.xattrs.items():
                    try:
                        os.setxattr(target, key, value)
                    except OSError:
                        pass
                os.utime(target, ns=(node.mtime_ns, node.mtime_ns))

    def _durable_node(self, ino: int) -> Node:
        if ino not in self.durable:
            self.durable[ino] = self.born[ino].copy()
        return self.durable[ino]

    def _make_durable(self, chosen: list[Op]) -> None:
        """Apply ``chosen`` and every earlier operation on an entry one of them touches (transitively)."""
        wanted, keys, keep = {op.seq for op in chosen}, set[Key](), []
        for op in reversed(self.ops):
            if op.seq in wanted or op.keys & keys:
                keys |= op.keys
                keep.append(op)
        taken = {op.seq for op in keep}
        self.ops = [op for op in self.ops if op.seq not in taken]
        for op in reversed(keep):
            if op.src is not None and self._durable_node(op.src[0]).entries.get(op.src[1]) == op.ino:
                del self.durable[op.src[0]].entries[op.src[1]]
            if op.dst is not None:
                self._durable_node(op.ino)
                self._durable_node(op.dst[0]).entries[op.dst[1]] = op.ino

    def _sync_data(self, ino: int, pages: set[int], size: int) -> None:
        live, node = self.live[ino], self._durable_node(ino)
        node.resize(size)
        for index in pages:
            if index in live.pages:
                node.pages[index] = live.pages[index]
            else:
                node.pages.pop(index, None)
        node.resize(size)

    def cut(self) -> str:
        """The power cut: a random subset of what is pending reaches BACKING, the rest is lost."""
        kept_ops = [op for op in self.ops if self.rng.random() < self.keep]
        total_ops = len(self.ops)
        self._make_durable(kept_ops)
        kept_pages = total_pages = torn_pages = 0
        for ino, pages in self.dirty.items():
            live, node = self.live[ino], self._durable_node(ino)
            survivors = {index for index in pages if self.rng.random() < self.keep}
            kept_pages, total_pages = kept_pages + len(survivors), total_pages + len(pages)
            if self.rng.random() < self.keep:
                size = live.size
            else:
                size = max([node.size] + [min(live.size, (i + 1) * PAGE) for i in survivors if i in live.pages])
            torn = {index: self._tear(node.pages.get(index, bytes(PAGE)), live.pages[index])
                    for index in sorted(survivors) if index in live.pages and self.rng.random() < TORN}
            self._sync_data(ino, survivors, size)
            for index, page in torn.items():
                if index in node.pages:  # still within the size
                    node.pages[index] = page
            torn_pages += len(torn)
        self._save()
        return (f"powercut: kept {total_ops - len(self.ops)} of {total_ops} metadata operations "
                f"({len(kept_ops)} drawn), {kept_pages} of {total_pages} pages ({torn_pages} torn); "
                f"{self.stats['fsync']} fsyncs, {self.stats['fsyncdir']} fsyncdirs before")

    def _tear(self, old: bytes, new: bytes) -> bytes:
        """A page whose write the power cut short: each sector the old one or the new one."""
        return b"".join((new if self.rng.random() < 0.5 else old)[at:at + SECTOR] for at in range(0, PAGE, SECTOR))

    def shutdown(self) -> None:
        """A clean unmount: everything durable."""
        self._make_durable(list(self.ops))
        for ino, pages in self.dirty.items():
            self._sync_data(ino, pages, self.live[ino].size)
        self._save()

    # -- the live image ------------------------------------------------------------------------

    def _new_ino(self) -> int:
        self.next_ino += 1
        return self.next_ino - 1

    def _node(self, ino: int) -> Node:
        try:
            return self.live[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        node, attr = self._node(ino), pyfuse3.EntryAttributes()
        attr.st_ino, attr.st_mode, attr.st_nlink = ino, node.mode, node.nlink
        attr.st_uid, attr.st_gid = node.uid, node.gid
        attr.st_size = len(node.target) if stat.S_ISLNK(node.mode) else node.size
        attr.st_blksize, attr.st_blocks = PAGE, (node.size + 511) // 512
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = node.mtime_ns
        attr.entry_timeout = attr.attr_timeout = TIMEOUT
        return attr

    def _op(self, ino: int, src: Key | None, dst: Key | None) -> None:
        self.seq += 1
        self.ops.append(Op(self.seq, ino, src, dst))

    def _child(self, parent: int, name: bytes) -> int:
        child = self._node(parent).entries.get(name)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return child

    def _make(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext, target: bytes = b"") -> int:
        directory = self._node(parent)
        if name in directory.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino = self._new_ino()
        node = Node(mode, ctx.uid, ctx.gid, target=target)
        self.born[ino] = node.copy()
        self.live[ino] = node
        self._link(ino, parent, name)
        if stat.S_ISDIR(mode):
            node.nlink += 1
            directory.nlink += 1
        return ino

    def _link(self, ino: int, parent: int, name: bytes) -> None:
        self.live[parent].entries[name] = ino
        self.live[ino].nlink += 1
        self.live[parent].mtime_ns = time.time_ns()
        self._op(ino, None, (parent, name))

    def _drop(self, parent: int, name: bytes) -> None:
        ino = self.live[parent].entries.pop(name)
        node = self.live[ino]
        node.nlink -= 1
        if stat.S_ISDIR(node.mode):
            node.nlink -= 1
            self.live[parent].nlink -= 1
        self.live[parent].mtime_ns = time.time_ns()

    def _write_pages(self, ino: int, offset: int, data: bytes) -> None:
        node, dirty = self.live[ino], self.dirty.setdefault(ino, set())
        end = offset + len(data)
        for index in range(offset // PAGE, (end + PAGE - 1) // PAGE):
            start = index * PAGE
            page = bytearray(node.pages.get(index, bytes(PAGE)))
            lo, hi = max(offset, start), min(end, start + PAGE)
            page[lo - start:hi - start] = data[lo - offset:hi - offset]
            node.pages[index] = bytes(page)
            dirty.add(index)
        node.size = max(node.size, end)
        node.mtime_ns = time.time_ns()

    # -- requests ------------------------------------------------------------------------------

    async def lookup(self, parent: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._child(parent, name))

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if fields.update_size:
            self.dirty.setdefault(inode, set()).update(node.resize(attr.st_size))
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        if inode in self.durable:  # attributes other than the size are not modelled: durable at once
            durable = self.durable[inode]
            durable.mode, durable.uid, durable.gid, durable.mtime_ns = node.mode, node.uid, node.gid, node.mtime_ns
        return self._attr(inode)

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self._node(inode).target

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._make(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ino = self._make(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return pyfuse3.FileInfo(fh=ino), self._attr(ino)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if new_name in self._node(new_parent_inode).entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        self._link(inode, new_parent_inode, new_name)
        return self._attr(inode)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self._child(parent_inode, name)
        if stat.S_ISDIR(self.live[ino].mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        self._drop(parent_inode, name)
        self._op(ino, (parent_inode, name), None)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self._child(parent_inode, name)
        if not stat.S_ISDIR(self.live[ino].mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.live[ino].entries:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        self._drop(parent_inode, name)
        self._op(ino, (parent_inode, name), None)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        ino = self._child(parent_inode_old, name_old)
        replaced = self.live[parent_inode_new].entries.get(name_new)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if replaced is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            if replaced == ino:
                return
            if stat.S_ISDIR(self.live[replaced].mode) and self.live[replaced].entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            self._drop(parent_inode_new, name_new)
        directory = stat.S_ISDIR(self.live[ino].mode)
        self._drop(parent_inode_old, name_old)
        self.live[parent_inode_new].entries[name_new] = ino
        self.live[ino].nlink += 1 + directory
        self.live[parent_inode_new].nlink += directory
        self._op(ino, (parent_inode_old, name_old), (parent_inode_new, name_new))

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & os.O_TRUNC:
            self.dirty.setdefault(inode, set()).update(self._node(inode).resize(0))
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self._node(fh).read(off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._write_pages(fh, off, buf)
        return len(buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        self.stats["fsync"] += 1
        self._sync_data(fh, self.dirty.pop(fh, set()), self.live[fh].size)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._node(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = sorted(self._node(fh).entries.items())
        for index in range(start_id, len(entries)):
            name, ino = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), index + 1):
                break

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.stats["fsyncdir"] += 1
        self._make_durable([op for op in self.ops if any(key[0] == fh for key in op.keys)])

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = PAGE
        data.f_blocks = data.f_bfree = data.f_bavail = 1 << 24
        data.f_files = data.f_ffree = data.f_favail = 1 << 20
        data.f_namemax = 255
        return data

    def _xattrs(self, inode: int) -> list[dict[bytes, bytes]]:
        return [self._node(inode).xattrs] + ([self.durable[inode].xattrs] if inode in self.durable else [])

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        for table in self._xattrs(inode):
            table[name] = value

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return self._node(inode).xattrs[name]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENODATA) from None

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(self._node(inode).xattrs)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if name not in self._node(inode).xattrs:
            raise pyfuse3.FUSEError(errno.ENODATA)
        for table in self._xattrs(inode):
            table.pop(name, None)


async def _serve(fs: PowerCut) -> None:
    async def on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    print(fs.cut(), file=sys.stderr, flush=True)
                else:
                    fs.shutdown()
                pyfuse3.terminate()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backing")
    parser.add_argument("mountpoint")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=float, default=0.5, help="probability that a pending write survives a cut")
    args = parser.parse_args()
    fs = PowerCut(os.path.abspath(args.backing), random.Random(args.seed), args.keep)
    pyfuse3.init(fs, args.mountpoint, {"fsname=powercut", "subtype=powercut"})
    try:
        trio.run(_serve, fs)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
