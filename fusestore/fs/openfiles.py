"""Open regular files: staging, sequential hashing and the commit at the last close.

The write path, as the filesystem sees it:

- Opening a file costs nothing. The first write (or truncate) gives the
  inode a staging file: empty when the file is truncated to 0 first (the
  shell's ``cmd > f``: libfuse negotiates atomic O_TRUNC, so the truncation
  arrives with open's flags), otherwise a copy of the current blob made by ``copy_file_range`` in a
  worker thread. Staging is per inode, shared by all its handles.
- Each write goes to the staging file with ``pwrite``. While writes arrive
  in order from offset 0, they also feed a running BLAKE3 hasher, so the
  common case (a file written front to back) needs no second pass; any other
  write order drops the hasher and the commit re-hashes the staging file in
  a worker thread. Nothing done per write grows with the file size.
- The commit happens at the flush of the last open handle of the inode (so
  that ``close()`` reports its errors), or at the last release. A flush of a
  handle that wrote nothing, or while other handles stay open, commits
  nothing. The commit runs in a worker thread: the staged bytes become a
  blob when the pool lacks them (``Tree.publish``), then one catalog
  transaction (``Tree.commit_staged``). Durability is fsync's job, as on
  ext4: close does not wait for the disk; the next checkpoint (fsync, or
  every few seconds) flushes the blobs, then the catalog.
- Readers of an inode with a staging file read the staging file: what was
  written is visible at once. Readers of committed content read the blob.
- A time set by utimens after the last write (tar, cp -a, rsync) is the
  mtime the commit keeps; otherwise the time of the last write.

This module is the filesystem layer's state; it calls the store only through
``Tree`` and runs blocking work through ``trio.to_thread``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .. import errors
from ..catalog import Inode
from ..pool import Staged
from ..store.tree import Tree
from .running_hash import RunningHash

QUICK_COMMIT = 1 << 20  # files up to this size commit on the loop, without a thread hop


@dataclass
class OpenInode:
    """The state of one inode while any handle is open on it."""

    ino: int
    handles: int = 0
    staged: Staged | None = None
    size: int = 0  # of the staged content
    hasher: RunningHash | None = None  # valid while writes came in order from offset 0
    hashed: int = 0
    mtime_ns: int | None = None
    blob_fd: int | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def dirty(self) -> bool:
        return self.staged is not None


class OpenFiles:
    """Every open inode, and the operations on their content."""

    def __init__(self, tree: Tree, on_dropped: Callable[[int, bytes, int], None]) -> None:
        """``on_dropped(parent, name, ino)`` tells the kernel a name went without its knowing."""
        self.tree = tree
        self.on_dropped = on_dropped
        self.inodes: dict[int, OpenInode] = {}
        self.expected: dict[int, bytes] = {}  # ino -> hash its next commit must have
        self.fresh: dict[int, tuple[int, bytes]] = {}  # created here, never committed: ino -> its entry

    def get(self, ino: int) -> OpenInode | None:
        return self.inodes.get(ino)

    def open(self, ino: int) -> OpenInode:
        state = self.inodes.get(ino)
        if state is None:
            state = self.inodes[ino] = OpenInode(ino)
            self.tree.opened(ino)
        state.handles += 1
        return state

    async def close(self, state: OpenInode) -> None:
        """Drop one handle; the last one commits what is still dirty and forgets the inode."""
        state.handles -= 1
        if state.handles > 0:
            return
        try:
            if state.dirty:
                await self.commit(state)
        finally:
            if state.handles == 0:
                self._close_blob(state)
                del self.inodes[state.ino]
                if self.tree.is_orphan(state.ino):  # deleting it may unlink a large blob
                    await trio.to_thread.run_sync(self.tree.closed, state.ino)
                else:
                    self.tree.closed(state.ino)

    # -- content ------------------------------------------------------------------

    async def _ensure_staged(self, state: OpenInode, keep: int) -> Staged:
        """The inode's staging file, created with the first ``keep`` bytes of its content."""
        if state.staged is None:
            node = self.tree.getattr(state.ino)
            keep = min(keep, node.size)
            if keep:  # copying the current content can take long
                state.staged = await trio.to_thread.run_sync(self.tree.stage, state.ino, keep)
            else:
                state.staged = self.tree.stage(state.ino, 0)
            state.size = keep
            state.hasher = self._running_hash(state.staged) if keep == 0 else None
            state.hashed = 0
        return state.staged

    def _running_hash(self, staged: Staged) -> RunningHash:
        """A hash of the staged bytes whose worker thread also starts writing them back to disk.

        Bytes already hashed were written, so starting their writeback as the
        file grows lets the disk work while the writes go on: an fsync or the
        next checkpoint then finds little left to do.
        """
        written_back = 0

        def start_writeback(hashed: int) -> None:
            nonlocal written_back
            self.tree.start_writeback(staged, written_back, hashed - written_back)
            written_back = hashed

        return RunningHash(on_progress=start_writeback)

    async def write(self, state: OpenInode, offset: int, data: bytes) -> int:
        async with state.lock:
            staged = await self._ensure_staged(state, keep=1 << 63)
            written = os.pwrite(staged.fd, data, offset)
            if state.hasher is not None:
                if offset == state.hashed and written == len(data):
                    await state.hasher.update(data)
                    state.hashed += written
                else:
                    self._drop_hash(state)
            state.size = max(state.size, offset + written)
            state.mtime_ns = time.time_ns()
            return written

    async def truncate(self, state: OpenInode, size: int) -> None:
        async with state.lock:
            staged = await self._ensure_staged(state, keep=size)
            os.ftruncate(staged.fd, size)
            if size == 0:
                self._drop_hash(state)
                state.hasher, state.hashed = self._running_hash(staged), 0
            elif state.hasher is not None and size != state.hashed:
                self._drop_hash(state)
            state.size = size
            state.mtime_ns = time.time_ns()

    async def read(self, state: OpenInode, offset: int, size: int) -> bytes:
        if state.staged is not None:
            async with state.lock:
                if state.staged is not None:
                    return os.pread(state.staged.fd, size, offset)
        if state.blob_fd is None:
            # Content changes all pass through here (commit) or through
            # ``forget_content``, so the blob stays valid until one of them.
            state.blob_fd = self.tree.content_fd(self.tree.getattr(state.ino))
            if state.blob_fd is None:
                return b""
        return os.pread(state.blob_fd, size, offset)

    def set_mtime(self, state: OpenInode, mtime_ns: int) -> None:
        """A time set explicitly after the last write is the one the commit keeps."""
        if state.dirty:
            state.mtime_ns = mtime_ns

    async def fsync(self, state: OpenInode) -> None:
        """Make what was written durable: the staging file, then a checkpoint.

        The checkpoint syncs the catalog record naming the staging file, and
        content another handle committed before (blobs first, then the catalog).
        """
        async with state.lock:
            if state.staged is not None:
                await trio.to_thread.run_sync(os.fsync, state.staged.fd)
        await trio.to_thread.run_sync(self.tree.sync)

    async def commit(self, state: OpenInode) -> Inode | None:
        """Publish the staged content (one transaction); errors reach the caller's close()."""
        async with state.lock:
            staged = state.staged
            if staged is None:
                return None
            try:
                if self._is_quick_commit(state):
                    return self._commit_blocking(state, staged)
                return await trio.to_thread.run_sync(self._commit_blocking, state, staged)
            finally:
                state.staged = None
                self._drop_hash(state)
                self._close_blob(state)

    def _is_quick_commit(self, state: OpenInode) -> bool:
        """Whether the commit is short work: small bytes, already hashed, replacing small content.

        Those run on the loop: a worker thread would cost more than the
        commit (its hop is about 0.3 ms here, most of a small file's close).
        Anything that may hash, or delete a large blob, goes to a thread.
        """
        return (
            state.size <= QUICK_COMMIT and state.hasher is not None and state.hashed == state.size
            and self.tree.getattr(state.ino).size <= QUICK_COMMIT
        )

    def _commit_blocking(self, state: OpenInode, staged: Staged) -> Inode | None:
        node = self.tree.getattr(state.ino)
        if node.nlink == 0:  # unlinked while open: nobody can ever read these bytes
            self._drop_hash(state)  # its thread may touch the staging file: stop it first
            self.tree.discard_staged(staged)
            return None
        if state.hasher is not None and state.hashed == state.size:
            digest, size = state.hasher.digest(), state.size
        else:
            self._drop_hash(state)
            digest, size = self.tree.hash_staged(staged)
        expected = self.expected.pop(state.ino, None)
        if expected is not None and digest != expected:
            self.tree.discard_staged(staged)
            self._drop_if_fresh(state.ino)
            raise errors.HashMismatch(f"content hashes to {digest.hex()}, expected {expected.hex()}")
        try:
            self.tree.publish(staged, digest)
            committed = self.tree.commit_staged(state.ino, staged, digest, size, state.mtime_ns)
        except BaseException:
            self.tree.discard_staged(staged)
            self.tree.forget_published(digest)
            raise
        self.fresh.pop(state.ino, None)
        return committed

    def _drop_if_fresh(self, ino: int) -> None:
        """A file created only to receive refused content disappears with it."""
        entry = self.fresh.pop(ino, None)
        if entry is not None:
            try:
                self.tree.unlink_inode(entry[0], entry[1], ino)
            except errors.StoreError:
                return  # renamed or removed meanwhile: nothing to undo
            self.on_dropped(entry[0], entry[1], ino)

    def attributes(self, node: Inode) -> Inode:
        """``node`` as readers must see it: the size and mtime of uncommitted writes."""
        state = self.inodes.get(node.ino)
        if state is not None and state.staged is not None:
            node.size = state.size
            if state.mtime_ns is not None:
                node.mtime_ns = state.mtime_ns
        return node

    @staticmethod
    def _drop_hash(state: OpenInode) -> None:
        if state.hasher is not None:
            state.hasher.abandon()
            state.hasher = None

    def forget_content(self, ino: int) -> None:
        """The committed content of ``ino`` changed behind the open handles' back."""
        state = self.inodes.get(ino)
        if state is not None:
            self._close_blob(state)

    @staticmethod
    def _close_blob(state: OpenInode) -> None:
        if state.blob_fd is not None:
            os.close(state.blob_fd)
        state.blob_fd = None
