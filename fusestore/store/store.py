"""The managed storage: named paths per namespace over refcounted contents.

This is the library's public face (``from fusestore import Store``). It is
plain synchronous Python, safe to call from several threads, and knows
nothing of FUSE: the filesystem layer is an adapter over it.

Paths live in the same inode/dirent tree the filesystem shows::

    /<env-uuid>/<path>        put_for_environment and friends
    /.users/<user>/<path>     put_for_user
    /.global/<path>           put_global

A put is the write path of ``writes`` without FUSE: its staging record is
made in the transaction that creates the path's missing directories and
file (a reader of a new file gets UploadPending until it commits), and a
checked put with a known length reserves its expected hash there too, so
that the content shows as pending to everyone else.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .. import errors, linux, private
from ..catalog import ROOT_INO, Catalog, Inode, Resource, Txn, unknown_resource
from ..digests import IO_BUFFER
from ..pool import (
    DEFAULT_COMPRESSION,
    BlobMissing,
    BlobReader,
    Compression,
    LocalBlobStore,
    LocalPackStore,
    NoBlobs,
    PackStore,
    ShortRead,
    StagingArea,
    StagingFile,
    memory_root,
)
from . import names
from .access import RequestResponse, RequestTable, choose_ranges
from .checkpoints import Checkpoints
from .chunks import Chunks
from .compaction import Compacted, Compaction
from .content import DEFAULT_VERIFY_LIMIT, Content
from .locking import StoreLock
from .namespace import GLOBAL_DIR, USERS_DIR, Namespace
from .openinodes import OpenInodes
from .owners import Owner, permits, process_owner
from .setid import cleared_by_write
from .stopping import Stopping
from .tenancy import DEFAULT_TENANCY, Tenancy, holds_own_copy
from .upgrade import upgrade
from .writes import Writes
from .xattrs import Xattrs

FILE_MODE = 0o644
DIR_MODE = 0o755


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
        packs: PackStore | None,
        compression: Compression,
        verify_limit: int,
        tenancy: Tenancy,
        max_file_size: int | None,
    ) -> None:
        self.path = Path(path)
        private.store_directory(self.path)
        self._lock = StoreLock(self.path)
        try:
            self.catalog = Catalog(self.path / "catalog")
            new = self.catalog.check_format(self.path)
        except BaseException:
            self._lock.release()
            raise
        store_id = secrets.token_bytes(16) if new else _store_id(self.catalog)  # a new one's is written with its root
        self.staging = StagingArea(self.path / "staging", memory=memory_root(store_id, self.path, create=True))
        legacy = self.path / "pool"  # whole-file blobs of a store made before chunks, until upgraded
        self.blobs = LocalBlobStore(legacy) if legacy.is_dir() else NoBlobs()
        self.packs = packs if packs is not None else LocalPackStore(self.path / "packs")
        self.opens = OpenInodes()
        self.stopping = Stopping()
        self.chunks = Chunks(self.catalog, self.packs, compression=compression,
                             covering=lambda: self.content.covering_checkpoint)
        self.content = Content(self.catalog, self.blobs, self.chunks, self.opens, verify_limit=verify_limit,
                               stopping=self.stopping)
        self.writes = Writes(self.catalog, self.staging, self.content, max_file_size=max_file_size)
        self.namespace = Namespace(self.catalog, self.content, self.writes)
        self.xattrs = Xattrs(self.catalog, self.writes)
        self.checkpoints = Checkpoints(self.catalog, self.staging, self.content, self.writes)
        self.compaction = Compaction(self.catalog, self.chunks)
        self.challenge_ranges = challenge_ranges
        self.randbelow = randbelow
        self.tenancy = tenancy
        self.requests = RequestTable(clock, request_ttl, max_open_requests, tenancy)
        self._uploads: Counter[int] = Counter()  # ino -> puts in flight in this process
        self._uploads_lock = threading.Lock()
        self._upload_inodes: dict[str, int] = {}  # staging name -> ino of each put in flight
        if new:
            self.namespace.initialise(store_id)
            for directory in (self.path, self.path.parent):  # the names of staging/ and packs/, and its own
                linux.fsync_path(directory)
        self.chunks.settle()
        self.checkpoints.recover()
        self.catalog.recovered()
        if legacy.is_dir() and upgrade(self):  # a store made before chunks: its blobs are in chunks now
            self.blobs = self.content.blobs = NoBlobs()

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
        packs: PackStore | None = None,
        compression: Compression = DEFAULT_COMPRESSION,
        verify_limit: int = DEFAULT_VERIFY_LIMIT,
        tenancy: Tenancy = DEFAULT_TENANCY,
        max_file_size: int | None = None,
    ) -> "Store":
        """Open the store at ``path``, creating it (mode 0700) when missing.

        A directory that group or others may enter is refused (``StoreExposed``,
        see ``fusestore.private``).

        ``packs`` is where chunks live; by default pack files in the store
        directory (``<path>/packs``). The staging area stays local.
        ``compression``: how chunks stored from now on are compressed (a
        store may hold chunks of several kinds).
        ``verify_limit``: files up to this size have their chunks hashed at
        their first read in this process (see ``content``); 0 hashes none.
        ``tenancy``: the rules between users (``store.tenancy``): caps on
        proof-of-access asks per uid, and what an ask or ``/.stats`` reveals.
        ``max_file_size``: no file grows past it (FileTooLarge, EFBIG); None
        leaves the limit to the filesystem that holds the staging area.
        """
        return cls(
            Path(path), clock=clock, request_ttl=request_ttl, challenge_ranges=challenge_ranges,
            max_open_requests=max_open_requests, randbelow=randbelow, packs=packs, compression=compression,
            verify_limit=verify_limit,
            tenancy=tenancy, max_file_size=max_file_size,
        )

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """A last checkpoint, then the store is free for another process."""
        if self._lock.fd < 0:
            return
        self.chunks.close()
        self.sync()
        self.catalog.close()
        self.staging.close()
        self._lock.release()

    def sync(self) -> None:
        """Make every committed change durable: a checkpoint (packs first, then the catalog)."""
        self.checkpoints.checkpoint()

    def compact(self, budget: int | None = None) -> Compacted:
        """Give back the space of deleted data (``compaction``): at most ``budget`` stored bytes copied, or all."""
        return self.compaction.run(budget)

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
        answered), and what the link creates belongs to it. The ask counts
        against the caps of the caller's uid (this process's without
        ``owner``) before anything else is checked.
        """
        if self.tenancy.requests == "off":
            raise errors.NotPermitted("proof-of-access requests are off in this store")
        uid = (owner or process_owner()).uid
        with self.requests.admission(uid) as admission:
            destination = self._env_path(env_uuid, path)
            digest = parse_hash(blake3_hex)
            with self.catalog.read() as tx:
                self._check_destination(tx, destination, owner)
                if self.tenancy.requests == "same-owner" and not holds_own_copy(tx, digest, uid):
                    raise unknown_resource(digest)  # exactly what unknown content gives
                try:
                    resource = tx.get(digest)
                except errors.ContentLost:  # as unknown: an upload of the same bytes is what restores it
                    raise errors.NotFound(f"the content {digest.hex()} is lost: upload it") from None
                ranges = choose_ranges(resource.length, self.challenge_ranges, self.randbelow)
                try:
                    answer = self.content.read_ranges(digest, ranges)  # of no ranges: the BLAKE3 of no bytes
                except (EOFError, BlobMissing):
                    raise errors.ResourceDeleted(
                        f"the blob of {digest.hex()} is shorter than its catalog entry") from None
            return admission.open(tuple(destination), digest, answer, ranges, owner)

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
            self._replace_special(tx, parent, name)
            node = self._file_at(tx, parent, name, owner)
            if owner.uid != 0:  # new bytes under the name, as a write gives: the same set-ID rule
                node.mode &= ~cleared_by_write(node.mode)
            tx.put(request.digest, resource.length)
            self.content.set_content(tx, node, request.digest, resource.length)

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
        node, depth = self.namespace.walk(tx, parts)
        if depth < len(parts):
            raise errors.NotFound(f"no such file: {b'/'.join(parts).decode(errors='replace')}")
        return node

    def _check_destination(self, tx: Txn, parts: list[bytes], owner: Owner | None) -> None:
        """Refuse a destination a link could not create, in the order the kernel resolves a path.

        With ``owner``, search permission on each directory comes before
        looking into it (EACCES), so that a refusal says nothing of what lies
        below. An existing component above the last that is not a directory
        is ENOTDIR, a symlink included (a link never follows one); a
        directory at the end is EISDIR. Then the mode bits must let
        ``owner`` write: the file whose content is replaced, or else the
        deepest existing directory, where the file is created (or replaces a
        symlink or special file, as rename(2) does, sticky bit included).
        """
        directory = self.namespace.inode(tx, ROOT_INO)
        for part in parts[:-1]:
            self._may(directory, owner, os.X_OK, parts)
            child = tx.lookup(directory.ino, part)
            if child is None:
                break  # the rest is created
            directory = self.namespace.inode(tx, child)
            if not stat.S_ISDIR(directory.mode):
                raise errors.NotADirectory(f"{part!r} is not a directory")
        else:
            self._may(directory, owner, os.X_OK, parts)
            existing = tx.lookup(directory.ino, parts[-1])
            target = self.namespace.inode(tx, existing) if existing is not None else None
            if target is not None and stat.S_ISDIR(target.mode):
                raise errors.IsADirectory(f"{parts[-1]!r} is a directory")
            if target is not None and stat.S_ISREG(target.mode):
                self._may(target, owner, os.W_OK, parts)
                return
            if (target is not None and owner is not None and directory.mode & stat.S_ISVTX
                    and owner.uid not in (0, directory.uid, target.uid)):
                raise errors.AccessDenied(f"uid {owner.uid} may not replace {self._shown(parts)} (sticky directory)")
        self._may(directory, owner, os.W_OK | os.X_OK, parts)

    @staticmethod
    def _may(node: Inode, owner: Owner | None, mask: int, parts: list[bytes]) -> None:
        if owner is not None and not permits(node, owner, mask):
            raise errors.AccessDenied(f"uid {owner.uid} may not write {Store._shown(parts)}")

    @staticmethod
    def _shown(parts: list[bytes]) -> str:
        return b"/".join(parts).decode(errors="replace")

    def _replace_special(self, tx: Txn, parent: Inode, name: bytes) -> None:
        """A symlink or special file at ``name`` goes, as rename(2) replaces it (a symlink's target is untouched)."""
        child = tx.lookup(parent.ino, name)
        if child is None:
            return
        node = self.namespace.inode(tx, child)
        if not (stat.S_ISREG(node.mode) or stat.S_ISDIR(node.mode)):
            self.namespace.remove_name(tx, parent, name, node)

    def _make_parents(self, tx: Txn, parts: list[bytes], owner: Owner) -> tuple[Inode, bytes]:
        """The directory that holds ``parts[-1]``, creating missing ones (owned by ``owner``) on the way."""
        node, depth = self.namespace.walk(tx, parts[:-1])
        if not stat.S_ISDIR(node.mode):
            raise errors.NotADirectory(f"{parts[depth - 1]!r} is a file, not a directory")
        for part in parts[depth:-1]:
            node = self.namespace.make_dir(tx, node, part, DIR_MODE, owner)
        return node, parts[-1]

    def _file_at(self, tx: Txn, parent: Inode, name: bytes, owner: Owner) -> Inode:
        """The regular file ``name`` in ``parent``; created (owned by ``owner``) without content when missing."""
        child = tx.lookup(parent.ino, name)
        if child is None:
            return self.namespace.new_file(tx, parent, name, FILE_MODE, owner, empty=False)
        node = self.namespace.inode(tx, child)
        if stat.S_ISDIR(node.mode):
            raise errors.IsADirectory(f"{name!r} is a directory")
        if not stat.S_ISREG(node.mode):
            raise errors.AlreadyExists(f"{name!r} exists and is not a regular file")
        return node

    # -- content ----------------------------------------------------------------

    def _put(self, parts: list[bytes], reader: BinaryIO, length: int, check: bytes | None) -> str:
        if length < -1:
            raise errors.LengthMismatch(f"length must be -1 (unknown) or >= 0, not {length}")
        self.writes.check_size(length)
        staged = self._begin_upload(parts, check, length)
        try:
            try:
                digest, size = staged.fill(reader, length)
            except BaseException as exc:
                self.writes.abandon(staged, remove_created=self._alone(staged))
                if isinstance(exc, ShortRead):
                    raise errors.LengthMismatch(str(exc)) from None
                raise
            if self.writes.commit(staged, digest, size, remove_created=self._alone(staged)) is None:
                raise errors.NotFound("the file was removed while it was being written")
        finally:
            self._forget_upload(staged)
        return digest.hex()

    def _begin_upload(self, parts: list[bytes], check: bytes | None, length: int) -> StagingFile:
        staged = self.staging.create()
        try:
            with self.catalog.write() as tx:
                parent, name = self._make_parents(tx, parts, process_owner())
                node = self._file_at(tx, parent, name, process_owner())
                # A file with no content yet was made by a put still in flight: whichever of
                # them ends last without committing removes it.
                created = (parent.ino, name) if node.content is None else None
                reserved = check is not None and length >= 0
                if check is not None and length >= 0:
                    tx.put(check, length)
                self.writes.record(tx, staged, node, keep=False, expected=check, reserved=reserved,
                                   created=created)
        except BaseException:
            self.staging.discard(staged)
            raise
        with self._uploads_lock:
            self._uploads[node.ino] += 1
        self._upload_inodes[staged.name] = node.ino
        return staged

    def _alone(self, staged: StagingFile) -> bool:
        """Whether no other put of this process writes the same file (a file it created may then go)."""
        with self._uploads_lock:
            return self._uploads[self._upload_inodes[staged.name]] == 1

    def _forget_upload(self, staged: StagingFile) -> None:
        ino = self._upload_inodes.pop(staged.name)
        with self._uploads_lock:
            self._uploads[ino] -= 1
            if self._uploads[ino] <= 0:
                del self._uploads[ino]

    def _get(self, parts: list[bytes]) -> tuple[BinaryIO, int]:
        with self.catalog.read() as tx:
            node = self._resolve(tx, parts)
            if stat.S_ISDIR(node.mode):
                raise errors.IsADirectory(f"{parts[-1]!r} is a directory")
            if node.content is None:
                raise errors.UploadPending(f"{parts[-1]!r} is still being uploaded")
            tx.get(node.content)  # UploadPending, ContentLost
        try:
            blob = self.content.checked_open(node.ino)  # the content now: its length is the catalog's
        except errors.NotFound:
            raise errors.NotFound(f"{parts[-1]!r} was removed meanwhile") from None
        return io.BufferedReader(BlobFile(blob), IO_BUFFER), blob.size

    def _remove(self, parts: list[bytes]) -> None:
        with self.catalog.read() as tx:
            parent = self._resolve(tx, parts[:-1])
        if not stat.S_ISDIR(parent.mode):
            raise errors.NotADirectory(f"{parts[-2]!r} is not a directory")
        self.namespace.unlink(parent.ino, parts[-1])

    # -- inspection (fsck, stats, tests) ------------------------------------------

    def resource(self, hash_hex: str) -> Resource | None:
        with self.catalog.read() as tx:
            return tx.resource(parse_hash(hash_hex))

    def resources(self) -> list[Resource]:
        with self.catalog.read() as tx:
            return list(tx.resources())


class BlobFile(io.RawIOBase):
    """A committed content as a file object, read front to back (what ``get_*`` returns)."""

    def __init__(self, blob: BlobReader) -> None:
        super().__init__()
        self._blob = blob
        self._offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        data = self._blob.pread(len(buffer), self._offset)
        buffer[:len(data)] = data
        self._offset += len(data)
        return len(data)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._offset, os.SEEK_END: self._blob.size}[whence]
        self._offset = base + offset
        return self._offset

    def tell(self) -> int:
        return self._offset

    def close(self) -> None:
        if not self.closed:
            self._blob.close()
        super().close()


def _store_id(catalog: Catalog) -> bytes:
    """The id of an initialised store (``meta/store_id``), made by the first writable open that finds none."""
    with catalog.read() as tx:
        found = tx.store_id()
    if found is not None:
        return found
    with catalog.write() as tx:
        made = tx.store_id() or secrets.token_bytes(16)
        tx.set_store_id(made)
    return made
