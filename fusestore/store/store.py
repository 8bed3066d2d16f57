"""The managed storage: named paths per namespace over refcounted contents.

This is the library's public face (``from fusestore import Store``). It is
plain synchronous Python, safe to call from several threads, and knows
nothing of FUSE: the filesystem layer is an adapter over it.

Paths live in the same inode/dirent tree the filesystem shows::

    /<env-uuid>/<path>        put_for_environment and friends
    /.users/<user>/<path>     put_for_user
    /.global/<path>           put_global

How a put works (the write path of DESIGN.md, without FUSE):

1. *Begin* (one transaction): create missing parent directories; when the
   path is missing, create its inode with no content yet (a reader gets
   UploadPending until the upload commits); record the staging file in the
   catalog so that a crash leaves nothing unaccounted for. A checked put
   with a known length also reserves its expected hash (``Txn.put``), so
   that the content shows as pending to everyone else.
2. *Stream* the reader into the staging file while hashing (no lock held,
   memory bounded by one chunk).
3. *Publish*, when the catalog lacks the content: the staging file becomes
   the blob (``LocalPool.publish``), before any lock is taken; it is
   durable at the next checkpoint (``sync``), which flushes the pool before
   the catalog.
4. *Commit* (one transaction): take one more reference (a new resource is
   marked complete, after checking under the writer lock that no concurrent
   release deleted the blob meanwhile), point the inode at the new content
   and release the old content's reference; a blob whose last reference
   went is deleted right after the commit, still under the writer lock.
   The staging name goes after the commit.
5. On any failure, *abort* (one transaction) undoes step 1: an inode it
   created goes, a reservation is released, the staging file is deleted.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import errors
from ..catalog import Catalog, Inode, Resource, StagingRecord, Txn
from ..digests import EMPTY_DIGEST, fd_reader, hash_ranges
from ..pool import LocalPool, ShortRead, Staged
from . import names
from .access import RequestResponse, RequestTable, choose_ranges
from .locking import StoreLock
from .owners import Owner, permits, process_owner
from .tree import GLOBAL_DIR, USERS_DIR, Tree

FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass
class Upload:
    """An upload begun in the catalog and not yet committed or aborted."""

    record: StagingRecord
    staged: Staged


def parse_hash(hash_hex: str) -> bytes:
    if not isinstance(hash_hex, str) or len(hash_hex) != 64:
        raise errors.InvalidName(f"a BLAKE3 hash is 64 hex digits, not {hash_hex!r}")
    try:
        return bytes.fromhex(hash_hex)
    except ValueError:
        raise errors.InvalidName(f"a BLAKE3 hash is 64 hex digits, not {hash_hex!r}") from None


class Store:
    """A store directory opened by this process (see ``Store.open``)."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float],
        request_ttl: float,
        challenge_ranges: int,
        max_open_requests: int,
        randbelow: Callable[[int], int],
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = StoreLock(self.path)
        try:
            self.catalog = Catalog(self.path / "catalog")
            new = self.catalog.check_format(self.path)
        except BaseException:
            self._lock.release()
            raise
        self.pool = LocalPool(self.path)
        self.tree = Tree(self.catalog, self.pool)
        self.challenge_ranges = challenge_ranges
        self.randbelow = randbelow
        self.requests = RequestTable(clock, request_ttl, max_open_requests)
        self._uploads: Counter[int] = Counter()  # ino -> uploads in flight in this process
        self._uploads_lock = threading.Lock()
        if new:
            self.tree.initialise()
        self._recover()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        request_ttl: float = 60.0,
        challenge_ranges: int = 32,
        max_open_requests: int = 10000,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> "Store":
        """Open the store at ``path``, creating it when missing."""
        return cls(
            Path(path), clock=clock, request_ttl=request_ttl, challenge_ranges=challenge_ranges,
            max_open_requests=max_open_requests, randbelow=randbelow,
        )

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """A last checkpoint, then the store is free for another process."""
        if self._lock.fd < 0:
            return
        self.sync()
        self.catalog.close()
        self._lock.release()

    def sync(self) -> None:
        """Make every committed change durable: a checkpoint (blobs first, then the catalog)."""
        self.tree.sync()

    # -- set-up and recovery --------------------------------------------------

    def _recover(self) -> None:
        """Finish what a previous process left: before anything else is served.

        - blobs published after the last checkpoint are checked; a file
          whose content a power loss took becomes empty (``Tree.check_unsynced``);
        - staging files of open files (recorded with ``keep``) are committed:
          what was written, and fsynced, must not be lost;
        - unfinished puts are undone: a put that did not return never
          promised anything;
        - inodes unlinked while open are deleted: no handle survives a restart;
        - staging files that no record names are deleted;
        - blobs a crash left without a reference are deleted: those freed
          since the last checkpoint, and those an unfinished commit published.
        """
        self.tree.check_unsynced()
        with self.catalog.read() as tx:
            records = list(tx.staging_records())
        kept = {record.name for record in records if record.keep}
        published = {digest for name in self.pool.staging_names()
                     if name not in kept and (digest := self.pool.published_digest(name)) is not None}
        for record in records:
            if record.keep:
                self._commit_recovered(record)
        with self.catalog.write() as tx:
            for record in tx.staging_records():
                if not record.keep:
                    self._undo_upload(tx, record, remove_created=True)
            for ino in tx.orphans():
                node = tx.inode(ino)
                if node is None:
                    tx.remove_orphan(ino)
                else:
                    self.tree.delete(tx, node)
        with self.catalog.read() as tx:
            recorded = {r.name for r in tx.staging_records()}
        for name in self.pool.staging_names():
            if name not in recorded:
                self.pool.discard_name(name)
        self.tree.delete_unreferenced(published)

    def _commit_recovered(self, record: StagingRecord) -> None:
        staged = self.pool.reopen_staging(record.name)
        if staged is None:
            self.tree.discard_staged_name(record.name)
            return
        digest, size = self.pool.hash_staging(staged)
        try:
            self.tree.publish(staged, digest)
            self.tree.commit_staged(record.ino, staged, digest, size, mtime_ns=None)
        except errors.NotFound:  # its inode went before the crash: nothing to keep
            self.tree.discard_staged(staged)
            self.tree.forget_published(digest)

    # -- the managed storage: environments, users, global ---------------------

    def put_for_environment(self, env_uuid: str, path: str, reader: BinaryIO, length: int) -> str:
        return self._put(self._env_path(env_uuid, path), reader, length, None)

    def put_for_environment_and_check_hash(
        self, env_uuid: str, path: str, reader: BinaryIO, length: int, check_hash: str
    ) -> str:
        return self._put(self._env_path(env_uuid, path), reader, length, parse_hash(check_hash))

    def get_for_environment(self, env_uuid: str, path: str) -> tuple[BinaryIO, int]:
        return self._get(self._env_path(env_uuid, path))

    def remove_for_environment(self, env_uuid: str, path: str) -> None:
        self._remove(self._env_path(env_uuid, path))

    def put_for_user(self, user: str, path: str, reader: BinaryIO, length: int) -> str:
        return self._put(self._user_path(user, path), reader, length, None)

    def get_for_user(self, user: str, path: str) -> tuple[BinaryIO, int]:
        return self._get(self._user_path(user, path))

    def remove_for_user(self, user: str, path: str) -> None:
        self._remove(self._user_path(user, path))

    def put_global(self, path: str, reader: BinaryIO, length: int) -> str:
        return self._put(self._global_path(path), reader, length, None)

    def get_global(self, path: str) -> tuple[BinaryIO, int]:
        return self._get(self._global_path(path))

    def remove_global(self, path: str) -> None:
        self._remove(self._global_path(path))

    @staticmethod
    def _env_path(env_uuid: str, path: str) -> list[bytes]:
        return [names.environment(env_uuid), *names.relative_path(path)]

    @staticmethod
    def _user_path(user: str, path: str) -> list[bytes]:
        return [USERS_DIR, names.user(user), *names.relative_path(path)]

    @staticmethod
    def _global_path(path: str) -> list[bytes]:
        return [GLOBAL_DIR, *names.relative_path(path)]

    # -- proof of access ------------------------------------------------------

    def put_for_environment_request(
        self, env_uuid: str, path: str, blake3_hex: str, *, owner: Owner | None = None
    ) -> RequestResponse:
        """Ask to link existing content at a path; answer the returned challenge to do it.

        With ``owner``, the link is made on that caller's behalf: it must be
        allowed to write the destination (checked now and again when
        answered), and what the link creates belongs to it.
        """
        destination = self._env_path(env_uuid, path)
        digest = parse_hash(blake3_hex)
        with self.catalog.read() as tx:
            self._check_destination(tx, destination, owner)
            resource = tx.get(digest)
            ranges = choose_ranges(resource.length, self.challenge_ranges, self.randbelow)
            answer = EMPTY_DIGEST  # the BLAKE3 of no bytes: empty content has no ranges
            if ranges:
                with self.pool.open(digest) as blob:
                    try:
                        answer = hash_ranges(fd_reader(blob.fileno()), ranges)
                    except EOFError:
                        raise errors.ResourceDeleted(f"blob {digest.hex()} is shorter than its catalog entry") from None
        return self.requests.add(tuple(destination), digest, answer, ranges, owner)

    def proof_of_access_response(self, request_id: str, answer_hex: str) -> None:
        """Check the answer and, when right, link the content (no bytes are written)."""
        request = self.requests.take(request_id, answer_hex)
        destination = list(request.destination)
        with self.catalog.write() as tx:
            resource = tx.resource(request.digest)
            if resource is None or not resource.complete:
                raise errors.ResourceDeleted(f"content {request.digest.hex()} was removed after the request")
            self._check_destination(tx, destination, request.owner)
            owner = request.owner or process_owner()
            parent, name = self._make_parents(tx, destination, owner)
            node = self._file_at(tx, parent, name, owner)
            tx.put(request.digest, resource.length)
            self.tree.set_content(tx, node, request.digest, resource.length)

    def locate_for_environment(self, env_uuid: str, path: str) -> tuple[int, bytes, int]:
        """(parent inode, name, inode) of an existing path: what a cache invalidation needs."""
        parts = self._env_path(env_uuid, path)
        with self.catalog.read() as tx:
            parent = self._resolve(tx, parts[:-1])
            child = tx.lookup(parent.ino, parts[-1])
        if child is None:
            raise errors.NotFound(f"no such file: {path}")
        return parent.ino, parts[-1], child

    # -- paths -> inodes --------------------------------------------------------

    def _resolve(self, tx: Txn, parts: list[bytes]) -> Inode:
        node, depth = self.tree.walk(tx, parts)
        if depth < len(parts):
            raise errors.NotFound(f"no such file: {b'/'.join(parts).decode(errors='replace')}")
        return node

    def _check_destination(self, tx: Txn, parts: list[bytes], owner: Owner | None) -> None:
        """Refuse a destination a link could not create: a file in the way, a directory there, no permission.

        With ``owner``, the mode bits must let it create or overwrite the file:
        search on every directory above, write on the file it replaces, or
        write and search on the deepest existing directory it is created in.
        """
        directory, depth = self.tree.walk(tx, parts[:-1])
        if not stat.S_ISDIR(directory.mode):
            raise errors.NotADirectory(f"{parts[depth - 1]!r} is a file, not a directory")
        existing = tx.lookup(directory.ino, parts[-1]) if depth == len(parts) - 1 else None
        target = self.tree.inode(tx, existing) if existing is not None else None
        if target is not None and stat.S_ISDIR(target.mode):
            raise errors.IsADirectory(f"{parts[-1]!r} is a directory")
        if owner is None:
            return
        if target is None:
            target, mask = directory, os.W_OK | os.X_OK
        else:
            mask = os.W_OK
        searchable = all(permits(d, owner, os.X_OK) for d in self.tree.ancestors(tx, directory))
        if not (searchable and permits(target, owner, mask)):
            raise errors.AccessDenied(f"uid {owner.uid} may not write {b'/'.join(parts).decode(errors='replace')}")

    def _make_parents(self, tx: Txn, parts: list[bytes], owner: Owner) -> tuple[Inode, bytes]:
        """The directory that holds ``parts[-1]``, creating missing ones (owned by ``owner``) on the way."""
        node, depth = self.tree.walk(tx, parts[:-1])
        if not stat.S_ISDIR(node.mode):
            raise errors.NotADirectory(f"{parts[depth - 1]!r} is a file, not a directory")
        for part in parts[depth:-1]:
            node = self.tree.make_dir(tx, node, part, DIR_MODE, owner)
        return node, parts[-1]

    def _file_at(self, tx: Txn, parent: Inode, name: bytes, owner: Owner) -> Inode:
        """The regular file ``name`` in ``parent``; created (owned by ``owner``) without content when missing."""
        child = tx.lookup(parent.ino, name)
        if child is None:
            return self.tree.new_file(tx, parent, name, FILE_MODE, owner, empty=False)
        node = self.tree.inode(tx, child)
        if stat.S_ISDIR(node.mode):
            raise errors.IsADirectory(f"{name!r} is a directory")
        if not stat.S_ISREG(node.mode):
            raise errors.AlreadyExists(f"{name!r} exists and is not a regular file")
        return node

    # -- content ----------------------------------------------------------------

    def _put(self, parts: list[bytes], reader: BinaryIO, length: int, check: bytes | None) -> str:
        if length < -1:
            raise errors.LengthMismatch(f"length must be -1 (unknown) or >= 0, not {length}")
        upload = self._begin_upload(parts, check, length)
        try:
            digest, size = self._stream(upload, reader, length)
            if check is not None and digest != check:
                raise errors.HashMismatch(f"content hashes to {digest.hex()}, expected {check.hex()}")
        except BaseException:
            self._abort_upload(upload)
            raise
        try:
            self.tree.publish(upload.staged, digest)
            self._commit_upload(upload, digest, size)
        except BaseException:
            self._abort_upload(upload)
            self.tree.forget_published(digest)
            raise
        return digest.hex()

    def _begin_upload(self, parts: list[bytes], check: bytes | None, length: int) -> Upload:
        staged = self.pool.create_staging()
        try:
            with self.catalog.write() as tx:
                parent, name = self._make_parents(tx, parts, process_owner())
                existed = tx.lookup(parent.ino, name) is not None
                node = self._file_at(tx, parent, name, process_owner())
                record = StagingRecord(staged.name, node.ino, expected=check)
                if not existed:
                    record.parent, record.entry = parent.ino, name
                if check is not None and length >= 0:
                    tx.put(check, length)
                    record.reserved = True
                tx.add_staging(record)
        except BaseException:
            self.pool.discard(staged)
            raise
        with self._uploads_lock:
            self._uploads[node.ino] += 1
        return Upload(record, staged)

    def _stream(self, upload: Upload, reader: BinaryIO, length: int) -> tuple[bytes, int]:
        """Copy the reader into the upload's staging file: (digest, size)."""
        staged = upload.staged
        try:
            return self.pool.fill(staged, reader, length)
        except ShortRead as exc:
            raise errors.LengthMismatch(str(exc)) from None

    def _commit_upload(self, upload: Upload, digest: bytes, size: int) -> None:
        with self.catalog.write() as tx:
            node = tx.inode(upload.record.ino)
            if node is None:
                raise errors.NotFound("the file was removed while it was being written")
            self.tree.reference(tx, digest, size, upload.staged, reserved=upload.record.reserved)
            tx.remove_staging(upload.staged.name)
            self.tree.set_content(tx, node, digest, size)
        self._forget_upload(upload)

    def _abort_upload(self, upload: Upload) -> None:
        with self.catalog.write() as tx:
            with self._uploads_lock:
                alone = self._uploads[upload.record.ino] == 1
            self._undo_upload(tx, upload.record, remove_created=alone)
        self.pool.discard(upload.staged)
        self._forget_upload(upload)

    def _forget_upload(self, upload: Upload) -> None:
        with self._uploads_lock:
            self._uploads[upload.record.ino] -= 1
            if self._uploads[upload.record.ino] <= 0:
                del self._uploads[upload.record.ino]

    def _undo_upload(self, tx: Txn, record: StagingRecord, *, remove_created: bool) -> None:
        """Release what ``_begin_upload`` took: the record, a reservation, a file it created.

        The created file goes only while it still has no content and no other
        upload of this process is writing it.
        """
        tx.remove_staging(record.name)
        tx.after_commit(lambda: self.pool.discard_name(record.name))
        if record.reserved and record.expected is not None:
            self.tree.release(tx, record.expected)
        node = tx.inode(record.ino)
        if (
            remove_created and record.parent and node is not None and node.content is None
            and tx.lookup(record.parent, record.entry) == record.ino
        ):
            tx.remove_entry(record.parent, record.entry)
            tx.delete_inode(node.ino)

    def _get(self, parts: list[bytes]) -> tuple[BinaryIO, int]:
        with self.catalog.read() as tx:
            node = self._resolve(tx, parts)
            if stat.S_ISDIR(node.mode):
                raise errors.IsADirectory(f"{parts[-1]!r} is a directory")
            if node.content is None:
                raise errors.UploadPending(f"{parts[-1]!r} is still being uploaded")
            resource = tx.get(node.content)
            try:
                reader = self.pool.open(resource.digest)
            except FileNotFoundError:
                raise errors.NotFound(f"{parts[-1]!r} was removed meanwhile") from None
        return reader, resource.length

    def _remove(self, parts: list[bytes]) -> None:
        with self.catalog.read() as tx:
            parent = self._resolve(tx, parts[:-1])
        if not stat.S_ISDIR(parent.mode):
            raise errors.NotADirectory(f"{parts[-2]!r} is not a directory")
        self.tree.unlink(parent.ino, parts[-1])

    # -- inspection (fsck, stats, tests) ------------------------------------------

    def resource(self, hash_hex: str) -> Resource | None:
        with self.catalog.read() as tx:
            return tx.resource(parse_hash(hash_hex))

    def resources(self) -> list[Resource]:
        with self.catalog.read() as tx:
            return list(tx.resources())
