"""The namespace: the inode operations a filesystem front end calls, and the rules they enforce.

Every public method is one catalog transaction and returns plain values
(``Attributes``), so that the filesystem layer stays an adapter and tests
drive the whole tree without a mount:

- ``/`` holds only environment directories (canonical lowercase UUIDs,
  made with mkdir), ``.global`` and ``.users``; nothing else may be created
  there (EPERM), and a name that is not a UUID is EINVAL.
- ``/.users`` holds one directory per user name, owned by its creator.
- Below an environment, user or global directory: any POSIX tree. Each
  inode remembers which of those roots it lives in (its *space*); links and
  renames never cross spaces (EXDEV), so a tool falls back to copying, and
  the copy deduplicates anyway.

Content changes are ``writes``' job; references and unlinked-while-open
inodes are ``content``'s.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable

from .. import errors
from ..catalog import FORMAT_VERSION, ROOT_INO, Catalog, Inode, Txn
from ..digests import EMPTY_DIGEST
from ..pool import StagingFile
from . import names
from .attributes import Attributes
from .content import Content
from .owners import Owner
from .setid import cleared_by_write
from .writes import Writes

GLOBAL_DIR = b".global"
USERS_DIR = b".users"
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


class Namespace:
    """Inodes and directory entries over one catalog."""

    def __init__(self, catalog: Catalog, content: Content, writes: Writes,
                 now_ns: Callable[[], int] = time.time_ns) -> None:
        self.catalog = catalog
        self.content = content
        self.writes = writes
        self.now_ns = now_ns

    # -- set-up -----------------------------------------------------------------

    def initialise(self, store_id: bytes) -> None:
        now = self.now_ns()
        with self.catalog.write() as tx:
            tx.meta_put(b"format", str(FORMAT_VERSION).encode())
            tx.set_store_id(store_id)
            root = Inode(ROOT_INO, stat.S_IFDIR | 0o1777, 0, 0, nlink=2,
                         atime_ns=now, mtime_ns=now, ctime_ns=now, parent=ROOT_INO)
            tx.save_inode(root)
            self.make_dir(tx, root, GLOBAL_DIR, 0o755, Owner(0, 0))
            self.make_dir(tx, root, USERS_DIR, 0o1777, Owner(0, 0))

    # -- building blocks (used inside a caller's transaction) -------------------

    @staticmethod
    def inode(tx: Txn, ino: int) -> Inode:
        return tx.existing_inode(ino)

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
            self.content.reference_empty(tx)
            node.content = EMPTY_DIGEST
        tx.save_inode(node)
        self.add_entry(tx, parent, name, node.ino, now)
        return node

    # -- reads --------------------------------------------------------------------

    def getattr(self, ino: int) -> Attributes:
        with self.catalog.read() as tx:
            return Attributes.of(self.inode(tx, ino))

    def lookup(self, parent: int, name: bytes) -> Attributes:
        with self.catalog.read() as tx:
            self.directory(tx, parent)
            child = tx.lookup(parent, name)
            if child is None:
                if len(name) > names.NAME_MAX:
                    raise errors.NameTooLong(f"name of {len(name)} bytes is longer than {names.NAME_MAX}")
                raise errors.NotFound(f"no entry {name!r}")
            return Attributes.of(self.inode(tx, child))

    def readdir(self, ino: int, after: bytes, limit: int) -> list[tuple[bytes, Attributes]]:
        """Up to ``limit`` entries of ``ino`` after the name ``after``, in name order."""
        result: list[tuple[bytes, Attributes]] = []
        with self.catalog.read() as tx:
            self.directory(tx, ino)
            if limit <= 0:
                return result
            for name, child in tx.entries(ino, after):
                result.append((name, Attributes.of(self.inode(tx, child))))
                if len(result) >= limit:
                    break
        return result

    def readlink(self, ino: int) -> bytes:
        with self.catalog.read() as tx:
            node = self.inode(tx, ino)
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

    def mkdir(self, parent_ino: int, name: bytes, mode: int, owner: Owner) -> Attributes:
        with self.catalog.write() as tx:
            parent = self._creating(tx, parent_ino, name)
            self.space_for_child(tx, parent, name, directory=True)
            if parent.mode & stat.S_ISGID:
                mode |= stat.S_ISGID
            return Attributes.of(self.make_dir(tx, parent, name, mode, self._owner_in(parent, owner)))

    def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int, owner: Owner) -> Attributes:
        """Any non-directory inode; a regular file starts with the empty content."""
        with self.catalog.write() as tx:
            parent = self._creating(tx, parent_ino, name)
            owner = self._owner_in(parent, owner)
            if stat.S_ISREG(mode) or stat.S_IFMT(mode) == 0:
                return Attributes.of(self.new_file(tx, parent, name, mode, owner, empty=True))
            space = self.space_for_child(tx, parent, name, directory=False)
            now = self.now_ns()
            node = Inode(tx.new_ino(), mode, owner.uid, owner.gid, rdev=rdev,
                         atime_ns=now, mtime_ns=now, ctime_ns=now, space=space)
            tx.save_inode(node)
            self.add_entry(tx, parent, name, node.ino, now)
            return Attributes.of(node)

    def create(self, parent_ino: int, name: bytes, mode: int, owner: Owner) -> tuple[Attributes, StagingFile]:
        """A new empty regular file, open for writing: its staging file is recorded in the same transaction.

        The record names the new entry, so that a refused first commit
        (``user.fusestore.expect``) removes the file it created.
        """
        staged = self.writes.staging.create(small=True)
        try:
            with self.catalog.write() as tx:
                parent = self._creating(tx, parent_ino, name)
                node = self.new_file(tx, parent, name, stat.S_IFREG | (mode & 0o7777),
                                     self._owner_in(parent, owner), empty=True)
                self.writes.record(tx, staged, node, keep=True, created=(parent.ino, name))
        except BaseException:
            self.writes.staging.discard(staged)
            raise
        return Attributes.of(node), staged

    def symlink(self, parent_ino: int, name: bytes, target: bytes, owner: Owner) -> Attributes:
        with self.catalog.write() as tx:
            parent = self._creating(tx, parent_ino, name)
            owner = self._owner_in(parent, owner)
            space = self.space_for_child(tx, parent, name, directory=False)
            now = self.now_ns()
            node = Inode(tx.new_ino(), stat.S_IFLNK | 0o777, owner.uid, owner.gid, size=len(target),
                         atime_ns=now, mtime_ns=now, ctime_ns=now, space=space, target=target)
            tx.save_inode(node)
            self.add_entry(tx, parent, name, node.ino, now)
            return Attributes.of(node)

    def link(self, ino: int, parent_ino: int, name: bytes) -> Attributes:
        with self.catalog.write() as tx:
            node = self.inode(tx, ino)
            parent = self._creating(tx, parent_ino, name)
            if stat.S_ISDIR(node.mode):
                raise errors.NotPermitted("hard links to directories are not allowed")
            if node.nlink <= 0:  # as linkat(2): an orphan stays one, and goes at its last close
                raise errors.NotFound(f"inode {ino} was unlinked")
            space = self.space_for_child(tx, parent, name, directory=False)
            if space != node.space:
                raise errors.CrossNamespace("hard links cannot cross environments")
            now = self.now_ns()
            node.nlink += 1
            node.ctime_ns = now
            tx.save_inode(node)
            self.add_entry(tx, parent, name, ino, now)
            return Attributes.of(node)

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
            self.remove_name(tx, parent, name, node)

    def remove_name(self, tx: Txn, parent: Inode, name: bytes, node: Inode) -> None:
        """Remove the entry ``name`` of a non-directory ``node`` from ``parent`` (in the caller's transaction)."""
        if stat.S_ISDIR(node.mode):
            raise errors.IsADirectory(f"{name!r} is a directory")
        now = self.now_ns()
        tx.remove_entry(parent.ino, name)
        parent.mtime_ns = parent.ctime_ns = now
        tx.save_inode(parent)
        self.content.drop_link(tx, node, now)

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
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            # RENAME_WHITEOUT (overlayfs) and unknown flags: EINVAL, as rename2(2) on a filesystem without them
            raise errors.InvalidArgument(f"rename flags {flags:#x} are not supported")
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
            self.content.drop_link(tx, target, now)

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
    ) -> Attributes:
        """Change metadata (not the size: that is a content change, see ``Writes.stage``)."""
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
            return Attributes.of(node)

    def clear_setid(self, ino: int) -> Attributes | None:
        """What a write by a caller without CAP_FSETID does to the mode (``setid.cleared_by_write``).

        The new attributes, or None when there was nothing to clear (and
        nothing was written).
        """
        with self.catalog.write() as tx:
            node = self.inode(tx, ino)
            bits = cleared_by_write(node.mode)
            if not bits:
                return None
            node.mode &= ~bits
            node.ctime_ns = self.now_ns()
            tx.save_inode(node)
            return Attributes.of(node)
