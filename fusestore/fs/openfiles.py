"""Open regular files: staging, sequential hashing and the commit at the last close.

The write path, as the filesystem sees it:

- Opening a file costs nothing. A file created through the mount gets its
  staging file with its inode (``Namespace.create``); otherwise the first
  write (or truncate) gives the inode one: empty when the file is truncated
  to 0 first (the shell's ``cmd > f``: libfuse negotiates atomic O_TRUNC, so
  the truncation arrives with open's flags), otherwise an edit over the
  current content (``store.edits``: nothing is copied). Staging is per
  inode, shared by all its handles; its bytes are read and written through
  ``Writes``, which knows an edit's.
- Each write goes to the staging file. While writes arrive
  in order from offset 0, they also feed a running BLAKE3 hasher, so the
  common case (a file written front to back) needs no second pass; any other
  write order drops the hasher and the commit re-hashes the staging file in
  a worker thread. Nothing done per write grows with the file size.
- The commit happens at the flush of the last open handle of the inode (so
  that ``close()`` reports its errors), or at the last release. A flush of a
  handle that wrote nothing, or while other handles stay open, commits
  nothing. The commit is the store's one commit path (``Writes.commit``),
  run in a worker thread unless it is short. Durability is fsync's job, as
  on ext4: close does not wait for the disk.
- Readers of an inode with a staging file read the staging file: what was
  written is visible at once. Readers of committed content read it through
  the blob store's reader.
- A time set by utimens after the last write (tar, cp -a, rsync) is the
  mtime the commit keeps; otherwise the time of the last write.

This module is the filesystem layer's state; blocking work runs through ``trio.to_thread``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .. import errors
from ..pool import BlobReader, StagingFile
from ..store import Store
from ..store.attributes import Attributes
from ..store.writes import Refused
from .running_hash import RunningHash

log = logging.getLogger(__name__)

QUICK_COMMIT = 1 << 20  # files up to this size commit on the loop, without a thread hop
# Worker threads for commits nobody waits for (at a release answered already), apart from trio's default
# ones: however many huge files anyone closes at once, the rest (a writer's close, unlink, rename, fsync,
# the checkpoints) still finds threads. Beyond this many, those commits queue.
BACKGROUND_COMMIT_THREADS = 16


@dataclass
class OpenInode:
    """The state of one inode while any handle is open on it."""

    ino: int
    handles: int = 0
    staged: StagingFile | None = None
    size: int = 0  # of the staged content
    hasher: RunningHash | None = None  # valid while writes came in order from offset 0
    hashed: int = 0
    unchanged: int = 0  # nothing was written below this offset since an edit's staging began
    mtime_ns: int | None = None
    blob: BlobReader | None = None
    lock: trio.Lock = field(default_factory=trio.Lock)
    setid: bool = False  # the mode has set-ID bits a write may clear (see ``callers``; kept by the adapter)

    @property
    def dirty(self) -> bool:
        return self.staged is not None


class OpenFiles:
    """Every open inode, and the operations on their content."""

    def __init__(self, store: Store, on_dropped: Callable[[int, bytes, int], None]) -> None:
        """``on_dropped(parent, name, ino)`` tells the kernel a name went without its knowing."""
        self.store = store
        self.on_dropped = on_dropped
        self.inodes: dict[int, OpenInode] = {}
        self.background_commits = trio.CapacityLimiter(BACKGROUND_COMMIT_THREADS)

    def get(self, ino: int) -> OpenInode | None:
        return self.inodes.get(ino)

    def open(self, ino: int) -> OpenInode:
        state = self.inodes.get(ino)
        if state is None:
            state = self.inodes[ino] = OpenInode(ino)
            self.store.opens.opened(ino)
        state.handles += 1
        return state

    def created(self, ino: int, staged: StagingFile) -> OpenInode:
        """The first handle of a file just created, with the staging file it was created with."""
        state = self.open(ino)
        state.staged, state.size, state.hashed = staged, 0, 0
        # a file closed unwritten keeps the time it was created, before and after a crash
        self._set_mtime(state, staged, self.store.namespace.getattr(ino).mtime_ns)
        state.hasher = self._running_hash(staged)
        return state

    async def close(self, state: OpenInode, *, background: bool = False) -> None:
        """Drop one handle; the last one commits what is still dirty and forgets the inode.

        ``background``: nobody waits for this close (a release answered already); see ``commit``.
        """
        state.handles -= 1
        if state.handles > 0:
            return
        try:
            if state.dirty:
                await self.commit(state, background=background)
        finally:
            # While the commit ran, the inode may have been opened and closed again: that last
            # close forgot it already (and the next open makes a new state).
            if state.handles == 0 and self.inodes.get(state.ino) is state:
                self._close_blob(state)
                del self.inodes[state.ino]
                if self.store.opens.is_orphan(state.ino):  # deleting it may delete a large blob
                    await trio.to_thread.run_sync(self.store.content.closed, state.ino)
                else:
                    self.store.content.closed(state.ino)

    # -- content ------------------------------------------------------------------

    async def _ensure_staged(self, state: OpenInode, keep: int) -> StagingFile:
        """The inode's staging file, created with the first ``keep`` bytes of its content."""
        if state.staged is None:
            keep = min(keep, self.store.namespace.getattr(state.ino).size)
            if keep:  # opening the current content (or copying it, see ``Writes.stage``) can take long
                state.staged = await trio.to_thread.run_sync(self.store.writes.stage, state.ino, keep)
            else:
                state.staged = self.store.writes.stage(state.ino, 0)
            state.size = state.unchanged = keep
            state.hasher = self._running_hash(state.staged) if keep == 0 else None
            state.hashed = 0
        return state.staged

    def _running_hash(self, staged: StagingFile) -> RunningHash:
        """A hash of the staged bytes whose worker thread also starts writing them back to disk.

        Bytes already hashed were written, so starting their writeback as the
        file grows lets the disk work while the writes go on: an fsync or the
        next checkpoint then finds little left to do.
        """
        written_back = 0

        def start_writeback(hashed: int) -> None:
            nonlocal written_back
            staged.start_writeback(written_back, hashed - written_back)
            written_back = hashed

        return RunningHash(on_progress=start_writeback, stream=self.store.writes.stream, read_back=staged.read)

    async def write(self, state: OpenInode, offset: int, data: bytes) -> int:
        allowed = self.store.writes.writable(offset, len(data))
        if allowed < len(data):
            data = data[:allowed]
        async with state.lock:
            staged = await self._ensure_staged(state, keep=1 << 63)
            written = self.store.writes.write(staged, data, offset)
            state.unchanged = min(state.unchanged, offset)
            if state.hasher is not None:
                if offset == state.hashed and written == len(data):
                    await state.hasher.update(data)
                    state.hashed += written
                else:
                    self._drop_hash(state)
            state.size = max(state.size, offset + written)
            self._set_mtime(state, staged, time.time_ns())
            return written

    async def truncate(self, state: OpenInode, size: int) -> None:
        self.store.writes.check_size(size)
        async with state.lock:
            staged = await self._ensure_staged(state, keep=size)
            self.store.writes.truncate(staged, size)
            state.unchanged = min(state.unchanged, size)
            if size == 0:
                self._drop_hash(state)
                state.hasher, state.hashed = self._running_hash(staged), 0
            elif state.hasher is not None and size != state.hashed:
                self._drop_hash(state)
            state.size = size
            self._set_mtime(state, staged, time.time_ns())

    async def read(self, state: OpenInode, offset: int, size: int) -> bytes:
        if state.staged is not None:
            async with state.lock:
                if state.staged is not None:
                    return self.store.writes.read(state.staged, size, offset)
        if state.blob is None:
            # Content changes all pass through here (commit) or through
            # ``forget_content``, so the reader stays valid until one of them.
            state.blob = self.store.content.checked_open(state.ino)
        return state.blob.pread(size, offset)

    async def check(self, state: OpenInode) -> None:
        """At open: the committed content is the catalog's (length, and BLAKE3 once), or BadContent (EIO)."""
        if state.staged is not None or state.blob is not None:
            return
        content = self.store.content
        reader, unverified = content.length_checked_open(state.ino)
        if unverified is not None:
            await trio.to_thread.run_sync(content.hash_check, state.ino, reader, unverified)
        state.blob = reader

    def set_mtime(self, state: OpenInode, mtime_ns: int) -> None:
        """A time set explicitly after the last write is the one the commit keeps (call it under ``state.lock``)."""
        if state.staged is not None:
            self._set_mtime(state, state.staged, mtime_ns)

    @staticmethod
    def _set_mtime(state: OpenInode, staged: StagingFile, mtime_ns: int) -> None:
        """The mtime the commit keeps, also as the staging file's: after a crash, recovery keeps that one."""
        state.mtime_ns = mtime_ns
        staged.set_modified_ns(mtime_ns)

    async def fsync(self, state: OpenInode) -> None:
        """Make what was written durable: the staging file and its size in its record, then a checkpoint.

        The checkpoint syncs that record, and content another handle
        committed before (blobs first, then the catalog).
        """
        async with state.lock:
            if state.staged is not None:
                await trio.to_thread.run_sync(self.store.writes.sync_staged, state.staged)
        await trio.to_thread.run_sync(self.store.sync)

    async def commit(self, state: OpenInode, *, background: bool = False) -> Attributes | None:
        """Publish the staged content (one transaction); errors reach the caller's close().

        ``background`` commits take threads of their own, a bounded number.
        """
        async with state.lock:
            staged = state.staged
            if staged is None:
                return None
            try:
                if self.is_quick_commit(state):
                    return self._commit_blocking(state, staged)
                limiter = self.background_commits if background else trio.to_thread.current_default_thread_limiter()
                return await trio.to_thread.run_sync(self._commit_blocking, state, staged, limiter=limiter)
            except errors.Interrupted:
                log.warning("the commit of inode %d (%d bytes) was cut short by the stop; recovery at the next "
                            "mount finishes it", state.ino, state.size)
                raise
            finally:
                state.staged = None
                self._drop_hash(state)
                self._close_blob(state)

    def is_long_close(self, state: OpenInode) -> bool:
        """Whether dropping this handle commits, and the commit may take long (see ``is_quick_commit``)."""
        return state.handles == 1 and state.dirty and not self.is_quick_commit(state)

    def is_quick_commit(self, state: OpenInode) -> bool:
        """Whether the commit is short work: small bytes, already hashed, replacing small content.

        Those run on the loop: a worker thread would cost more than the
        commit (its hop is about 0.3 ms here, most of a small file's close).
        Anything that may hash, or delete a large blob, goes to a thread.
        """
        return (
            state.size <= QUICK_COMMIT and state.hasher is not None and state.hashed == state.size
            and self.store.namespace.getattr(state.ino).size <= QUICK_COMMIT
        )

    def _commit_blocking(self, state: OpenInode, staged: StagingFile) -> Attributes | None:
        writes = self.store.writes
        if self.store.namespace.getattr(state.ino).nlink == 0:  # unlinked while open: nobody can read these bytes
            self._drop_hash(state)  # its thread may touch the staging file: stop it first
            writes.abandon(staged, remove_created=False)
            return None
        streamed = None
        try:
            if state.hasher is not None and state.hashed == state.size:
                digest, size = state.hasher.digest(), state.size
                streamed = state.hasher.streamed()
            else:
                self._drop_hash(state)
                digest, size = writes.hash(staged, self.store.stopping.check)  # a huge file's gives up at a stop
        except errors.Interrupted:
            raise  # the staging file stays recorded: recovery finishes the commit
        except BaseException:
            # As a failed commit (Writes.commit): the file keeps its last content. A record left
            # behind would have recovery commit these bytes over whatever is written next.
            writes.abandon(staged, remove_created=False)
            raise
        try:
            return writes.commit(staged, digest, size, mtime_ns=state.mtime_ns, streamed=streamed,
                                 unchanged=state.unchanged)
        except Refused as refused:  # a file created only to receive refused content disappears with it
            if refused.dropped is not None:
                self.on_dropped(refused.dropped.parent, refused.dropped.name, refused.dropped.ino)
            raise
        finally:
            if streamed is not None:
                streamed.close()

    def attributes(self, attributes: Attributes) -> Attributes:
        """``attributes`` as readers must see them: the size and mtime of uncommitted writes."""
        state = self.inodes.get(attributes.ino)
        if state is None or state.staged is None:
            return attributes
        mtime_ns = attributes.mtime_ns if state.mtime_ns is None else state.mtime_ns
        return dataclasses.replace(attributes, size=state.size, mtime_ns=mtime_ns)

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
        if state.blob is not None:
            state.blob.close()
        state.blob = None
