"""The inode-level face of the store: what the filesystem layer calls.

Every public method is one catalog transaction and enforces the namespace
rules, so that the filesystem layer stays an adapter and tests can drive
the whole tree without a mount:

- ``/`` holds only environment directories (canonical lowercase UUIDs,
  made with mkdir), ``.global`` and ``.users``; nothing else may be created
  there (EPERM), and a name that is not a UUID is EINVAL.
- ``/.users`` holds one directory per user name, owned by its creator.
- Below an environment, user or global directory: any POSIX tree. Each
  inode remembers which of those roots it lives in (its *space*); links and
  renames never cross spaces (EXDEV), so a tool falls back to copying, and
  the copy deduplicates anyway.

Content changes go through staging files: ``stage`` records one for an
inode (recovery commits it after a crash), the filesystem fills it, and
``commit_staged`` publishes it in one transaction, deduplicating against
the pool. Inodes unlinked while open are kept (nlink 0) and recorded as
orphans until their last handle closes, or until recovery deletes them.
"""

from __future__ import annotations

import functools
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable

from .. import errors
from ..catalog import COMPLETE, FORMAT_VERSION, PENDING, ROOT_INO, Catalog, Inode, StagingRecord, Txn
from ..digests import EMPTY_DIGEST
from ..pool import LocalPool, Staged
from . import names
from .owners import Owner

GLOBAL_DIR = b".global"
USERS_DIR = b".users"
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")
# No SELinux labels either. Refusing them (rather than answering "none") also
# lets `ls -l` stop asking once per file: coreutils remembers EOPNOTSUPP per filesystem.
SELINUX_XATTR = b"security.selinux"

UNSYNCED_ALL = (1 << 64) - 1  # a checkpoint number past every other

log = logging.getLogger(__name__)


class Tree:
    """Inodes, directory entries, xattrs and content references over one catalog and pool."""

    def __init__(self, catalog: Catalog, pool: LocalPool, now_ns: Callable[[], int] = time.time_ns) -> None:
        self.catalog = catalog
        self.pool = pool
        self.now_ns = now_ns
        self._open: Counter[int] = Counter()
        self._orphans: set[int] = set()  # unlinked while open, in this process
        self._open_lock = threading.Lock()
        self._next_checkpoint = 0  # the number of the checkpoint that will cover blobs published now

    # -- set-up -----------------------------------------------------------------

    def initialise(self) -> None:
        now = self.now_ns()
        with self.catalog.write() as tx:
            tx.meta_put(b"format", str(FORMAT_VERSION).encode())
            root = Inode(ROOT_INO, stat.S_IFDIR | 0o1777, 0, 0, nlink=2,
                         atime_ns=now, mtime_ns=now, ctime_ns=now, parent=ROOT_INO)
            tx.save_inode(root)
            self.make_dir(tx, root, GLOBAL_DIR, 0o755, Owner(0, 0))
            self.make_dir(tx, root, USERS_DIR, 0o1777, Owner(0, 0))

    # -- building blocks (used inside a caller's transaction) -------------------

    @staticmethod
    def inode(tx: Txn, ino: int) -> Inode:
        node = tx.inode(ino)
        if node is None:
            raise errors.NotFound(f"no inode {ino}")
        return node

    def directory(self, tx: Txn, ino: int) -> Inode:
        node = self.inode(tx, ino)
        if not stat.S_ISDIR(node.mode):
            raise errors.NotADirectory(f"inode {ino} is not a directory")
        return node

    def walk(self, tx: Txn, parts: list[bytes]) -> tuple[Inode, int]:
        """The deepest existing inode along ``parts``, and how many parts lead to it."""
        node = self.inode(tx, ROOT_INO)
        for depth, part in enumerate(parts):
            if not stat.S_ISDIR(node.mode):
                raise errors.NotADirectory(f"{part!r} is under a file, not a directory")
            child = tx.lookup(node.ino, part)
            if child is None:
                return node, depth
            node = self.inode(tx, child)
        return node, len(parts)

    def space_for_child(self, tx: Txn, parent: Inode, name: bytes, *, directory: bool) -> int:
        """The space a new entry ``name`` in ``parent`` belongs to, enforcing what may be created where."""
        if parent.ino == ROOT_INO:
            if not directory:
                raise errors.NotPermitted("only environment directories can be created in /")
            if not names.is_environment(name):
                raise errors.InvalidName(
                    f"{name.decode(errors='replace')!r} is not an environment: "
                    "directories in / must be canonical lowercase UUIDs"
                )
            return 0  # the new directory is its own space; make_dir fills it in
        if parent.space == 0:  # /.users
            if not directory:
                raise errors.NotPermitted("only user directories can be created in /.users")
            names.user(os.fsdecode(name))
            return 0
        return parent.space

    def make_dir(self, tx: Txn, parent: Inode, name: bytes, mode: int, owner: Owner) -> Inode:
        now = self.now_ns()
        node = Inode(tx.new_ino(), stat.S_IFDIR | (mode & 0o7777), owner.uid, owner.gid, nlink=2,
                     atime_ns=now, mtime_ns=now, ctime_ns=now, parent=parent.ino)
        node.space = parent.space if parent.space else node.ino
        if parent.ino == ROOT_INO and name in (GLOBAL_DIR, USERS_DIR):
            node.space = node.ino if name == GLOBAL_DIR else 0
        tx.save_inode(node)
        parent.nlink += 1
        self.add_entry(tx, parent, name, node.ino, now)
        return node

    def add_entry(self, tx: Txn, parent: Inode, name: bytes, ino: int, now: int) -> None:
        tx.add_entry(parent.ino, name, ino)
        parent.mtime_ns = parent.ctime_ns = now
        tx.save_inode(parent)

    def new_file(self, tx: Txn, parent: Inode, name: bytes, mode: int, owner: Owner, *, empty: bool) -> Inode:
        """A regular file, empty or (``empty=False``) an upload that has not committed yet."""
        now = self.now_ns()
        space = self.space_for_child(tx, parent, name, directory=False)
        node = Inode(tx.new_ino(), stat.S_IFREG | (mode & 0o7777), owner.uid, owner.gid, nlink=1,
                     atime_ns=now, mtime_ns=now, ctime_ns=now, space=space)
        if empty:
            self.reference_empty(tx)
            node.content = EMPTY_DIGEST
        tx.save_inode(node)
        self.add_entry(tx, parent, name, node.ino, now)
        return node

    def set_content(self, tx: Txn, node: Inode, digest: bytes, length: int, mtime_ns: int | None = None) -> None:
        """Point ``node`` at ``digest`` (already referenced) and release its old content."""
        old = node.content
        now = self.now_ns()
        node.content = digest
        node.size = length
        node.mtime_ns = now if mtime_ns is None else mtime_ns
        node.ctime_ns = now
        tx.save_inode(node)
        if old is not None:
            self.release(tx, old)

    def release(self, tx: Txn, digest: bytes) -> None:
        """Drop one reference; the blob goes right after the commit when it was the last.

        The deletion runs under the writer lock (``Catalog.write``), so a
        concurrent publish of the same content cannot have its blob deleted.
        The digest is listed as freed until the next checkpoint, since a
        crash between the commit and the deletion would leave the blob behind.
        """
        if tx.remove(digest):
            if digest != EMPTY_DIGEST:
                tx.add_freed(digest)  # so that recovery deletes the blob if a crash comes first
            tx.after_commit(lambda: self.pool.remove(digest))

    def reference(self, tx: Txn, digest: bytes, length: int, staged: Staged, *, reserved: bool) -> None:
        """Take one reference to ``digest``, whose bytes ``publish`` put in the pool before the lock.

        A reservation (checked put) already holds the reference; it only
        needs the resource marked complete. The staging name goes after the commit.
        """
        resource = tx.resource(digest) if reserved else tx.put(digest, length)
        assert resource is not None, "a reservation lost its resource"
        tx.after_commit(lambda: self.pool.discard(staged))
        if resource.complete:
            return
        self.pool.ensure_published(staged, digest)
        resource.state = COMPLETE
        tx.save_resource(resource)
        if digest != EMPTY_DIGEST:
            tx.add_unsynced(digest, self._next_checkpoint)

    def publish(self, staged: Staged, digest: bytes) -> None:
        """Put the staged bytes in the pool, unless the catalog holds them already.

        Called before the commit and outside the writer lock, so that the
        file system work of one file never holds up every other writer.
        """
        if self.needs_sync(digest):
            self.pool.publish(staged, digest)

    def forget_published(self, digest: bytes) -> None:
        """After a failed commit: remove the blob ``publish`` made, unless something references it."""
        with self.catalog.write() as tx:
            resource = tx.resource(digest)
            if resource is None or not resource.complete:
                self.pool.remove(digest)

    @staticmethod
    def reference_empty(tx: Txn) -> None:
        """One more reference to the empty content, which is complete without any blob."""
        resource = tx.put(EMPTY_DIGEST, 0)
        if not resource.complete:
            resource.state = COMPLETE
            tx.save_resource(resource)

    def drop_link(self, tx: Txn, node: Inode, now: int) -> None:
        """One name of ``node`` went: delete it with its last name, unless it is still open."""
        node.nlink -= 1
        node.ctime_ns = now
        if node.nlink > 0 or self.is_open(node.ino):
            if node.nlink <= 0:
                tx.add_orphan(node.ino)
                with self._open_lock:
                    self._orphans.add(node.ino)
            tx.save_inode(node)
            return
        self.delete(tx, node)

    def delete(self, tx: Txn, node: Inode) -> None:
        tx.delete_inode(node.ino)
        tx.remove_orphan(node.ino)
        if node.content is not None:
            self.release(tx, node.content)

    # -- open files -------------------------------------------------------------

    def is_open(self, ino: int) -> bool:
        with self._open_lock:
            return self._open[ino] > 0

    def opened(self, ino: int) -> None:
        with self._open_lock:
            self._open[ino] += 1

    def is_orphan(self, ino: int) -> bool:
        """Whether the last close of ``ino`` deletes it (and so may take long)."""
        with self._open_lock:
            return ino in self._orphans

    def closed(self, ino: int) -> None:
        """The last close of an unlinked inode deletes it."""
        with self._open_lock:
            self._open[ino] -= 1
            if self._open[ino] > 0:
                return
            del self._open[ino]
            if ino not in self._orphans:
                return
            self._orphans.discard(ino)
        with self.catalog.write() as tx:
            node = tx.inode(ino)
            if node is not None and node.nlink <= 0 and not self.is_open(ino):
                self.delete(tx, node)

    # -- reads --------------------------------------------------------------------

    def getattr(self, ino: int) -> Inode:
        with self.catalog.read() as tx:
            return self.inode(tx, ino)

    def lookup(self, parent: int, name: bytes) -> Inode:
        with self.catalog.read() as tx:
            self.directory(tx, parent)
            child = tx.lookup(parent, name)
            if child is None:
                if len(name) > names.NAME_MAX:
                    raise errors.NameTooLong(f"name of {len(name)} bytes is longer than {names.NAME_MAX}")
                raise errors.NotFound(f"no entry {name!r}")
            return self.inode(tx, child)

    def readdir(self, ino: int, after: bytes, limit: int) -> list[tuple[bytes, Inode]]:
        """Up to ``limit`` entries of ``ino`` after the name ``after``, in name order."""
        result = []
        with self.catalog.read() as tx:
            self.directory(tx, ino)
            for name, child in tx.entries(ino, after):
                result.append((name, self.inode(tx, child)))
                if len(result) >= limit:
                    break
        return result

    def readlink(self, ino: int) -> bytes:
        node = self.getattr(ino)
        if not stat.S_ISLNK(node.mode):
            raise errors.InvalidArgument(f"inode {ino} is not a symlink")
        return node.target

    # -- creation -------------------------------------------------------------------

    def _creating(self, tx: Txn, parent_ino: int, name: bytes) -> Inode:
        parent = self.directory(tx, parent_ino)
        names.component(name)
        if tx.lookup(parent_ino, name) is not None:
            raise errors.AlreadyExists(f"{name!r} exists")
        return parent

    @staticmethod
    def _owner_in(parent: Inode, owner: Owner) -> Owner:
        """A setgid directory gives its group to what is created in it."""
        return Owner(owner.uid, parent.gid) if parent.mode & stat.S_ISGID else owner

    def mkdir(self, parent_ino: int, name: bytes, mode: int, owner: Owner) -> Inode:
        with self.catalog.write() as tx:
            parent = self._creating(tx, parent_ino, name)
            self.space_for_child(tx, parent, name, directory=True)
            if parent.mode & stat.S_ISGID:
                mode |= stat.S_ISGID
            return self.make_dir(tx, parent, name, mode, self._owner_in(parent, owner))

    def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int, owner: Owner) -> Inode:
        """Any non-directory inode; a regular file starts with the empty content."""
        with self.catalog.write() as tx:
            parent = self._creating(tx, parent_ino, name)
            owner = self._owner_in(parent, owner)
            if stat.S_ISREG(mode) or stat.S_IFMT(mode) == 0:
                return self.new_file(tx, parent, name, mode, owner, empty=True)
            space = self.space_for_child(tx, parent, name, directory=False)
            now = self.now_ns()
            node = Inode(tx.new_ino(), mode, owner.uid, owner.gid, rdev=rdev,
                         atime_ns=now, mtime_ns=now, ctime_ns=now, space=space)
            tx.save_inode(node)
            self.add_entry(tx, parent, name, node.ino, now)
            return node

    def symlink(self, parent_ino: int, name: bytes, target: bytes, owner: Owner) -> Inode:
        with self.catalog.write() as tx:
            parent = self._creating(tx, parent_ino, name)
            owner = self._owner_in(parent, owner)
            space = self.space_for_child(tx, parent, name, directory=False)
            now = self.now_ns()
            node = Inode(tx.new_ino(), stat.S_IFLNK | 0o777, owner.uid, owner.gid, size=len(target),
                         atime_ns=now, mtime_ns=now, ctime_ns=now, space=space, target=target)
            tx.save_inode(node)
            self.add_entry(tx, parent, name, node.ino, now)
            return node

    def link(self, ino: int, parent_ino: int, name: bytes) -> Inode:
        with self.catalog.write() as tx:
            node = self.inode(tx, ino)
            parent = self._creating(tx, parent_ino, name)
            if stat.S_ISDIR(node.mode):
                raise errors.NotPermitted("hard links to directories are not allowed")
            space = self.space_for_child(tx, parent, name, directory=False)
            if space != node.space:
                raise errors.CrossNamespace("hard links cannot cross environments")
            now = self.now_ns()
            node.nlink += 1
            node.ctime_ns = now
            tx.save_inode(node)
            self.add_entry(tx, parent, name, ino, now)
            return node

    # -- removal and renaming -----------------------------------------------------------

    def _entry(self, tx: Txn, parent_ino: int, name: bytes) -> tuple[Inode, Inode]:
        parent = self.directory(tx, parent_ino)
        child = tx.lookup(parent_ino, name)
        if child is None:
            if len(name) > names.NAME_MAX:
                raise errors.NameTooLong(f"name of {len(name)} bytes is longer than {names.NAME_MAX}")
            raise errors.NotFound(f"no entry {name!r}")
        return parent, self.inode(tx, child)

    def unlink(self, parent_ino: int, name: bytes) -> None:
        with self.catalog.write() as tx:
            parent, node = self._entry(tx, parent_ino, name)
            self._unlink(tx, parent, name, node)

    def _unlink(self, tx: Txn, parent: Inode, name: bytes, node: Inode) -> None:
        if stat.S_ISDIR(node.mode):
            raise errors.IsADirectory(f"{name!r} is a directory")
        now = self.now_ns()
        tx.remove_entry(parent.ino, name)
        parent.mtime_ns = parent.ctime_ns = now
        tx.save_inode(parent)
        self.drop_link(tx, node, now)

    def unlink_inode(self, parent_ino: int, name: bytes, ino: int) -> None:
        """Unlink ``name`` only while it still names ``ino`` (an undo that must not hit a newcomer)."""
        with self.catalog.write() as tx:
            parent, node = self._entry(tx, parent_ino, name)
            if node.ino != ino:
                raise errors.NotFound(f"{name!r} names another inode now")
            self._unlink(tx, parent, name, node)

    def rmdir(self, parent_ino: int, name: bytes) -> None:
        with self.catalog.write() as tx:
            parent, node = self._entry(tx, parent_ino, name)
            if not stat.S_ISDIR(node.mode):
                raise errors.NotADirectory(f"{name!r} is not a directory")
            if parent_ino == ROOT_INO and name in (GLOBAL_DIR, USERS_DIR):
                raise errors.NotPermitted(f"/{name.decode()} is part of the store")
            self._remove_dir(tx, parent, name, node, self.now_ns())

    def _remove_dir(self, tx: Txn, parent: Inode, name: bytes, node: Inode, now: int) -> None:
        if tx.has_entries(node.ino):
            raise errors.NotEmpty(f"{name!r} is not empty")
        tx.remove_entry(parent.ino, name)
        parent.nlink -= 1
        parent.mtime_ns = parent.ctime_ns = now
        tx.save_inode(parent)
        tx.delete_inode(node.ino)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        with self.catalog.write() as tx:
            src_dir, node = self._entry(tx, old_parent, old_name)
            dst_dir = self.directory(tx, new_parent) if new_parent != old_parent else src_dir
            names.component(new_name)
            if ROOT_INO in (old_parent, new_parent) or src_dir.space == 0 or dst_dir.space == 0:
                raise errors.NotPermitted("environments and user directories cannot be renamed or moved")
            if src_dir.space != dst_dir.space:
                raise errors.CrossNamespace("renames cannot cross environments")
            target_ino = tx.lookup(new_parent, new_name)
            target = self.inode(tx, target_ino) if target_ino is not None else None
            if stat.S_ISDIR(node.mode):
                self._refuse_move_into_itself(tx, node, dst_dir)
            now = self.now_ns()
            if flags & RENAME_EXCHANGE:
                if target is None:
                    raise errors.NotFound(f"no entry {new_name!r} to exchange with")
                if stat.S_ISDIR(target.mode):
                    self._refuse_move_into_itself(tx, target, src_dir)
                self._exchange(tx, src_dir, old_name, node, dst_dir, new_name, target, now)
                return
            if target is not None:
                if flags & RENAME_NOREPLACE:
                    raise errors.AlreadyExists(f"{new_name!r} exists")
                if target.ino == node.ino:
                    return  # two names of one inode: POSIX says do nothing
                self._replace(tx, dst_dir, new_name, node, target, now)
            tx.remove_entry(old_parent, old_name)
            tx.add_entry(new_parent, new_name, node.ino)
            self._moved(tx, node, src_dir, dst_dir, now)

    def ancestors(self, tx: Txn, directory: Inode) -> list[Inode]:
        """``directory`` and every directory above it, up to the root."""
        chain = [directory]
        while directory.ino != ROOT_INO and directory.parent != directory.ino:
            directory = self.inode(tx, directory.parent)
            chain.append(directory)
        return chain

    def _refuse_move_into_itself(self, tx: Txn, node: Inode, destination: Inode) -> None:
        if any(directory.ino == node.ino for directory in self.ancestors(tx, destination)):
            raise errors.InvalidArgument("cannot move a directory into itself")

    def _replace(self, tx: Txn, dst_dir: Inode, new_name: bytes, node: Inode, target: Inode, now: int) -> None:
        if stat.S_ISDIR(node.mode):
            if not stat.S_ISDIR(target.mode):
                raise errors.NotADirectory(f"{new_name!r} is not a directory")
            self._remove_dir(tx, dst_dir, new_name, target, now)
        else:
            if stat.S_ISDIR(target.mode):
                raise errors.IsADirectory(f"{new_name!r} is a directory")
            tx.remove_entry(dst_dir.ino, new_name)
            self.drop_link(tx, target, now)

    def _moved(self, tx: Txn, node: Inode, src_dir: Inode, dst_dir: Inode, now: int) -> None:
        """Fix directory link counts and parents after ``node`` moved from src_dir to dst_dir."""
        if stat.S_ISDIR(node.mode) and src_dir.ino != dst_dir.ino:
            node.parent = dst_dir.ino
            src_dir.nlink -= 1
            dst_dir.nlink += 1
        node.ctime_ns = now
        tx.save_inode(node)
        for directory in {src_dir.ino: src_dir, dst_dir.ino: dst_dir}.values():
            directory.mtime_ns = directory.ctime_ns = now
            tx.save_inode(directory)

    def _exchange(self, tx: Txn, src_dir: Inode, old_name: bytes, node: Inode,
                  dst_dir: Inode, new_name: bytes, target: Inode, now: int) -> None:
        tx.add_entry(src_dir.ino, old_name, target.ino)
        tx.add_entry(dst_dir.ino, new_name, node.ino)
        if src_dir.ino != dst_dir.ino:
            for moved, old_home, new_home in ((node, src_dir, dst_dir), (target, dst_dir, src_dir)):
                if stat.S_ISDIR(moved.mode):
                    moved.parent = new_home.ino
                    old_home.nlink -= 1
                    new_home.nlink += 1
        for moved in (node, target):
            moved.ctime_ns = now
            tx.save_inode(moved)
        for directory in {src_dir.ino: src_dir, dst_dir.ino: dst_dir}.values():
            directory.mtime_ns = directory.ctime_ns = now
            tx.save_inode(directory)

    # -- attributes ---------------------------------------------------------------------

    def setattr(
        self, ino: int, *, mode: int | None = None, uid: int | None = None, gid: int | None = None,
        atime_ns: int | None = None, mtime_ns: int | None = None,
    ) -> Inode:
        """Change metadata (not the size: that is a content change, see ``stage``)."""
        with self.catalog.write() as tx:
            node = self.inode(tx, ino)
            if mode is not None:
                node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
            if uid is not None:
                node.uid = uid
            if gid is not None:
                node.gid = gid
            if atime_ns is not None:
                node.atime_ns = atime_ns
            if mtime_ns is not None:
                node.mtime_ns = mtime_ns
            node.ctime_ns = self.now_ns()
            tx.save_inode(node)
            return node

    # -- extended attributes ----------------------------------------------------------------

    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if name in ACL_XATTRS:
            raise errors.NotSupported("POSIX ACLs are not supported; permissions are the mode bits")
        if name == SELINUX_XATTR:
            raise errors.NotSupported("SELinux labels are not supported")
        if not name or len(name) > XATTR_NAME_MAX:
            raise errors.InvalidArgument(f"extended attribute name of {len(name)} bytes")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self._check_xattr_name(name)
        with self.catalog.read() as tx:
            self.inode(tx, ino)
            value = tx.xattr(ino, name)
        if value is None:
            raise errors.NoAttribute(f"no attribute {name!r}")
        return bytes(value)

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise errors.InvalidArgument(f"extended attribute value of {len(value)} bytes")
        with self.catalog.write() as tx:
            node = self.inode(tx, ino)
            tx.set_xattr(ino, name, value)
            node.ctime_ns = self.now_ns()
            tx.save_inode(node)

    def listxattr(self, ino: int) -> list[bytes]:
        with self.catalog.read() as tx:
            self.inode(tx, ino)
            return [name for name, _ in tx.xattr_items(ino)]

    def removexattr(self, ino: int, name: bytes) -> None:
        self._check_xattr_name(name)
        with self.catalog.write() as tx:
            node = self.inode(tx, ino)
            if not tx.remove_xattr(ino, name):
                raise errors.NoAttribute(f"no attribute {name!r}")
            node.ctime_ns = self.now_ns()
            tx.save_inode(node)

    # -- content of open files ------------------------------------------------------------------

    def stage(self, ino: int, copy_length: int) -> Staged:
        """A staging file for ``ino``, recorded so that recovery commits it.

        It starts with the first ``copy_length`` bytes of the current content
        (0 for a truncating open: nothing is copied). The copy can be long:
        the filesystem calls this from a worker thread.
        """
        with self.catalog.read() as tx:
            node = self.inode(tx, ino)
        if not stat.S_ISREG(node.mode):
            raise errors.InvalidArgument(f"inode {ino} is not a regular file")
        staged = self.pool.create_staging()
        try:
            if copy_length and node.content is not None:
                self.pool.copy_into(staged, node.content, min(copy_length, node.size))
            with self.catalog.write() as tx:
                tx.add_staging(StagingRecord(staged.name, ino, keep=True))
        except BaseException:
            self.pool.discard(staged)
            raise
        return staged

    def commit_staged(self, ino: int, staged: Staged, digest: bytes, size: int, mtime_ns: int | None) -> Inode:
        """Make the staged bytes the content of ``ino``: one transaction, deduplicated.

        The staged bytes must have been published (``Tree.publish``) when the
        pool lacks the content. ``mtime_ns`` keeps a time a tool set
        after its last write (tar, cp -a, rsync); None means now.
        """
        with self.catalog.write() as tx:
            tx.remove_staging(staged.name)
            node = tx.inode(ino)
            if node is None:  # deleted meanwhile: the bytes have nowhere to go
                raise errors.NotFound(f"inode {ino} was deleted")
            self.reference(tx, digest, size, staged, reserved=False)
            self.set_content(tx, node, digest, size, mtime_ns)
            return node

    def discard_staged(self, staged: Staged) -> None:
        staged.close()
        self.discard_staged_name(staged.name)

    def discard_staged_name(self, name: str) -> None:
        with self.catalog.write() as tx:
            tx.remove_staging(name)
        self.pool.discard_name(name)

    def start_writeback(self, staged: Staged, offset: int, length: int) -> None:
        self.pool.start_writeback(staged, offset, length)

    def hash_staged(self, staged: Staged) -> tuple[bytes, int]:
        return self.pool.hash_staging(staged)

    def content_fd(self, node: Inode) -> int | None:
        """A read-only descriptor of the node's blob; None for empty or not yet committed content."""
        if node.content is None or node.content == EMPTY_DIGEST:
            return None
        return self.pool.open_fd(node.content)

    def needs_sync(self, digest: bytes) -> bool:
        """Whether the catalog lacks ``digest`` as complete content (so its bytes must be published)."""
        with self.catalog.read() as tx:
            resource = tx.resource(digest)
        return resource is None or not resource.complete

    def sync(self) -> None:
        """A checkpoint: make everything committed so far durable, blobs first, then the catalog.

        One pool flush covers every blob published since the last checkpoint
        (group commit). The checkpoint's number moves on under the writer
        lock before the flush, so a blob listed under this number was
        published before the flush began; later ones wait for the next.
        """
        with self.catalog.write() as tx:
            covering = self._next_checkpoint
            self._next_checkpoint += 1
            pending = tx.has_unsynced()
            tx.clear_freed()  # their deletions ran right after their commits, under this lock
        if pending:
            self.pool.flush()
            with self.catalog.write() as tx:
                tx.remove_unsynced_up_to(covering)
        self.catalog.sync()

    def delete_unreferenced(self, digests: set[bytes]) -> None:
        """After a crash: delete the blobs among ``digests`` that no complete resource names.

        They are blobs freed just before the crash, or published by a
        commit that never came (see ``Store._recover``).
        """
        with self.catalog.write() as tx:
            for digest in digests | set(tx.freed()):
                resource = tx.resource(digest)
                if resource is None or not resource.complete:
                    tx.after_commit(functools.partial(self.pool.remove, digest))
            tx.clear_freed()

    def check_unsynced(self) -> list[int]:
        """After a crash: check the blobs no checkpoint covered; content that did not survive is lost.

        A power loss can take the bytes of a blob published after the last
        checkpoint while the catalog's transaction reached the disk. Files
        that point at such a blob become empty (as a file not fsynced before
        a crash may on any filesystem), with an error in the log; the
        inode numbers are returned. After a crash of the process alone,
        every blob checks out; a flush then makes them durable and the list
        starts empty (its checkpoint numbers were the crashed process's).
        """
        with self.catalog.read() as tx:
            unsynced = tx.unsynced()
            damaged = [res for digest in unsynced
                       if (res := tx.resource(digest)) is not None and not self.pool.verify(digest, res.length)]
        lost: list[int] = []
        if not unsynced:
            return lost
        self.pool.flush()
        with self.catalog.write() as tx:
            tx.remove_unsynced_up_to(UNSYNCED_ALL)
            for resource in damaged:
                lost += self._empty_files_of(tx, resource.digest)
                remaining = tx.resource(resource.digest)
                if remaining is not None:  # reserved by an unfinished upload, which recovery undoes
                    remaining.state = PENDING
                    tx.save_resource(remaining)
                tx.after_commit(functools.partial(self.pool.remove, resource.digest))
        return lost

    def _empty_files_of(self, tx: Txn, digest: bytes) -> list[int]:
        lost = [node for node in tx.inodes() if stat.S_ISREG(node.mode) and node.content == digest]
        for node in lost:
            log.error("the content of inode %d (%d bytes, BLAKE3 %s) was lost in a crash before it "
                      "reached the disk; the file is now empty", node.ino, node.size, digest.hex())
            self.reference_empty(tx)
            self.set_content(tx, node, EMPTY_DIGEST, 0)
        return [node.ino for node in lost]
