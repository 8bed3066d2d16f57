"""What ``fusestore fsck --repair`` does to a store, and what recovery would do to it.

``recovery_plan`` reads an ``Inspection`` and says what ``Store.open``'s
recovery would do, without doing it (fsck without ``--repair`` changes
nothing). The repairs run on a store this process opened (recovery has run
by then): each is a plain function over its catalog and pool that does one
job and returns one line per change it made, naming the path or the blob.

A blob that is missing, of the wrong length or (``--verify``) hashing to
another digest cannot be fixed from the store itself: it is moved to
``<store>/lost+found/`` and its resource becomes *lost*, so that the files
using it fail to read with EIO (``errors.ContentLost``) instead of serving
wrong bytes, until the same content is committed again and completes it.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .. import private
from ..catalog import COMPLETE, LOST, PENDING, ROOT_INO, Catalog, Resource
from ..digests import EMPTY_DIGEST
from ..pool.local import blob_path
from . import fsck
from .inspect import Inspection, decode_name
from .locking import StoreLock

if TYPE_CHECKING:
    from .store import Store

LOST_AND_FOUND = "lost+found"


def _users(ins: Inspection, digest: bytes) -> str:
    paths = ins.paths_using(digest)
    return ", ".join(paths) if paths else "no file"


# -- what recovery would do (read-only) ---------------------------------------------------------------------


def recovery_plan(ins: Inspection) -> Iterator[str]:
    """One line per thing ``Store.open``'s recovery would finish or undo (``Checkpoints.recover``'s order)."""
    for digest, _ in ins.unsynced():
        res = ins.resource(digest)
        if res is None or not res.complete or _intact(ins, digest, res.length):
            yield (f"recovery would check blob {digest.hex()} (not yet known durable) and find it intact "
                   f"(used by {_users(ins, digest)})")
        else:
            yield (f"recovery would empty the files using blob {digest.hex()}, whose bytes did not reach the "
                   f"disk, and delete it: {_users(ins, digest)}")
    files = set(ins.staging_files())
    for record in ins.staging_records():
        where = ins.describe(record.ino)
        if record.keep and record.name in files and ins.tx.catalog.power_lost:
            synced = ins.tx.synced(record.name)
            yield (f"recovery would drop what was written to {where}, which no fsync covered before the "
                   f"machine went down (staging file {record.name})" if synced is None else
                   f"recovery would commit the first {synced.size} bytes written to {where}, which an fsync "
                   f"made durable before the machine went down (staging file {record.name})")
            continue
        if record.keep and record.name in files:
            size = os.stat(ins.path / "staging" / record.name).st_size
            yield (f"recovery would commit the {size} bytes written to {where} "
                   f"(staging file {record.name}; discarded if they are not its expected content)")
            continue
        undo = f"recovery would undo the unfinished change of {where} (staging file {record.name})"
        if record.reserved and record.expected is not None:
            undo += f", releasing its reservation of {record.expected.hex()}"
        node = ins.inode(record.ino)
        if (not record.keep and record.parent and node is not None and node.content is None
                and ins.tx.lookup(record.parent, record.entry) == record.ino):
            undo += ", removing the file it created"
        yield undo
    for ino in ins.orphans():
        node = ins.inode(ino)
        if node is not None and node.nlink:
            yield (f"recovery would delete {ins.describe(ino)}: it is listed as unlinked while open "
                   f"but has nlink {node.nlink} (fsck --repair forgets that record first)")
        elif node is not None:
            yield f"recovery would delete inode {ino}, unlinked while open"
        else:
            yield f"recovery would forget the orphan record of missing inode {ino}"
    reserved = {record.expected for record in ins.staging_records() if record.reserved}  # their undo says it
    for res in ins.resources():
        if res.state == PENDING and res.digest not in reserved and not ins.inodes_using(res.digest):
            yield (f"recovery would drop the content {res.digest.hex()} ({res.length} bytes), still pending "
                   "with no upload left to finish it")
    recorded = {record.name for record in ins.staging_records()}
    for name in ins.staging_files():
        if name.removesuffix(".blob") not in recorded:
            yield f"recovery would delete staging file {name}, which no record names"
    pool = {blob.digest for blob in ins.blobs()}
    for digest in ins.freed():
        res = ins.resource(digest)
        if res is not None and res.complete:
            yield f"recovery would forget that blob {digest.hex()} was freed: its content is in use again"
        elif digest in pool:
            yield f"recovery would delete blob {digest.hex()}, freed before the store was closed"
        else:
            yield f"recovery would forget that blob {digest.hex()} was freed: it is gone already"


def _intact(ins: Inspection, digest: bytes, length: int) -> bool:
    path = Path(blob_path(ins.path / "pool", digest))
    try:
        return path.stat().st_size == length and fsck.hash_file(str(path)) == digest
    except FileNotFoundError:
        return False


# -- repairs ----------------------------------------------------------------------------------------------------


def forget_named_orphans(path: Path) -> list[str]:
    """Before recovery runs: an orphan record of an inode some entry still names would make it delete that file."""
    lock = StoreLock(path)
    try:
        catalog = Catalog(path / "catalog")
        try:
            with catalog.write() as tx:
                named = {child for _, _, child in tx.all_entries()}
                wrong = [ino for ino in tx.orphans() if ino in named]
                for ino in wrong:
                    tx.remove_orphan(ino)
        finally:
            catalog.close()
    finally:
        lock.release()
    return [f"forgot the orphan record of inode {ino}, which entries still name (recovery would have deleted it)"
            for ino in wrong]


# -- repairs of an open store ----------------------------------------------------------------------------------


def repair(store: Store, corrupt: set[bytes]) -> list[str]:
    """Every repair, in an order where each leaves the next less to do; ``corrupt``: blobs ``--verify`` found bad."""
    done: list[str] = []
    for job in (remove_dangling_entries, free_nameless_inodes, fix_nlinks, fix_refcounts):
        done += job(store)
    done += lose_damaged_blobs(store, corrupt)
    done += settle_pending(store)
    done += clear_extra_blobs(store)
    done += leave_cycles(store)
    return done


def remove_dangling_entries(store: Store) -> list[str]:
    """Entries naming a missing inode go (the name cannot be opened, only listed)."""
    with Inspection.over(store.catalog, store.path) as ins:
        inodes = ins.inode_map()
        dangling = [(parent, name, child, _entry_path(ins, parent, name))
                    for parent, name, child in ins.entries() if child not in inodes]
    if not dangling:
        return []
    with store.catalog.write() as tx:
        for parent, name, _, _ in dangling:
            tx.remove_entry(parent, name)
    return [f"removed entry {path}, which named missing inode {child}" for _, _, child, path in dangling]


def free_nameless_inodes(store: Store) -> list[str]:
    """Inodes no entry names (recovery deleted the recorded orphans) are deleted, with their content reference.

    A nameless directory that still holds entries is left alone: its files
    may have names elsewhere.
    """
    with Inspection.over(store.catalog, store.path) as ins:
        parents = {entry.parent for entry in ins.entries()}
        nameless = [node for node in ins.inode_map().values()
                    if node.ino != ROOT_INO and not ins.names_of(node.ino)]
    done = []
    with store.catalog.write() as tx:
        for node in nameless:
            if stat.S_ISDIR(node.mode) and node.ino in parents:
                continue
            store.content.delete(tx, node)
            done.append(f"freed inode {node.ino} ({_kind(node.mode)}, {node.size} bytes), which no entry named")
    return done


def fix_nlinks(store: Store) -> list[str]:
    """Link counts become what the entries say: a file's is its names, a directory's 2 plus its subdirectories."""
    with Inspection.over(store.catalog, store.path) as ins:
        inodes = ins.inode_map()
        links: Counter[int] = Counter()
        subdirectories: Counter[int] = Counter()
        for parent, _, child in ins.entries():
            links[child] += 1
            if child in inodes and stat.S_ISDIR(inodes[child].mode):
                subdirectories[parent] += 1
        wrong = []
        for node in inodes.values():
            expected = 2 + subdirectories[node.ino] if stat.S_ISDIR(node.mode) else links[node.ino]
            if node.nlink != expected and expected > 0:
                wrong.append((node.ino, node.nlink, expected, ins.describe(node.ino)))
    with store.catalog.write() as tx:
        for ino, _, expected, _ in wrong:
            node = tx.existing_inode(ino)
            node.nlink = expected
            tx.save_inode(node)
    return [f"set the nlink of {where} from {old} to {new}" for _, old, new, where in wrong]


def fix_refcounts(store: Store) -> list[str]:
    """Refcounts become the references counted (files and reservations); a resource nobody references goes."""
    done = []
    with Inspection.over(store.catalog, store.path) as ins:
        references = fsck.references(ins)
        resources = {res.digest: res for res in ins.resources()}
        lengths = {node.content: node.size for node in ins.inode_map().values()
                   if stat.S_ISREG(node.mode) and node.content is not None}
        described = {digest: _users(ins, digest) for digest in set(references) | set(resources)}
    with store.catalog.write() as tx:
        for digest, res in resources.items():
            count = references[digest]
            if count == 0:
                done.append(f"deleted resource {digest.hex()} (refcount {res.refcount}), "
                            "which nothing references, with its blob")
                res.refcount = 1
                tx.save_resource(res)
                store.content.release(tx, digest)  # the row goes, and the blob after the commit
            elif count != res.refcount:
                done.append(f"set the refcount of {digest.hex()} from {res.refcount} to {count} "
                            f"(used by {described[digest]})")
                res.refcount = count
                tx.save_resource(res)
        for digest, count in references.items():
            if digest not in resources:
                length = lengths.get(digest, 0)
                state = COMPLETE if store.content.verify(digest, length) else LOST
                tx.save_resource(Resource(digest, length, count, state))
                done.append(f"made the missing resource {digest.hex()} ({length} bytes, refcount {count}, "
                            f"{'complete' if state == COMPLETE else 'lost: no intact blob'}; "
                            f"used by {described[digest]})")
    return done


def lose_damaged_blobs(store: Store, corrupt: set[bytes]) -> list[str]:
    """A complete content whose blob is missing, of the wrong length or corrupt is marked lost (see the docstring)."""
    with Inspection.over(store.catalog, store.path) as ins:
        present = {blob.digest: blob for blob in ins.blobs()}
        damaged = []
        for res in ins.resources():
            if not res.complete or res.digest == EMPTY_DIGEST:
                continue
            blob = present.get(res.digest)
            if blob is None:
                why = "is missing"
            elif blob.size != res.length:
                why = f"has {blob.size} bytes, not {res.length}"
            elif res.digest in corrupt and not store.content.verify(res.digest, res.length):
                why = "holds bytes of another hash"
            else:
                continue
            damaged.append((res.digest, why, _users(ins, res.digest)))
    done = []
    for digest, why, users in damaged:
        moved = _lose(store, digest)
        where = f", moved to {moved}" if moved else ""
        done.append(f"marked content {digest.hex()} lost: its blob {why}{where}; these read EIO until the same "
                    f"bytes are written again: {users}")
    return done


def settle_pending(store: Store) -> list[str]:
    """A pending resource no upload reserved (recovery undid them all): complete when its blob is intact, else lost."""
    with Inspection.over(store.catalog, store.path) as ins:
        reserved = {record.expected for record in ins.staging_records() if record.reserved}
        pending = [(res, _users(ins, res.digest)) for res in ins.resources()
                   if res.state == PENDING and res.digest not in reserved]
    done = []
    for res, users in pending:
        if store.content.verify(res.digest, res.length):
            with store.catalog.write() as tx:
                store.content.complete(tx, res.digest)
            done.append(f"completed pending resource {res.digest.hex()}: its blob is intact (used by {users})")
        else:
            moved = _lose(store, res.digest)
            where = f" (its damaged blob moved to {moved})" if moved else ""
            done.append(f"marked pending resource {res.digest.hex()} lost: no intact blob{where}; these read EIO "
                        f"until the same bytes are written again: {users}")
    return done


def clear_extra_blobs(store: Store) -> list[str]:
    """Blobs no complete content names are deleted; the intact blob of a lost content completes it again."""
    with Inspection.over(store.catalog, store.path) as ins:
        extra = []
        for blob in ins.blobs():
            res = ins.resource(blob.digest)
            if res is None or not res.complete:
                extra.append((blob.digest, res, _users(ins, blob.digest)))
    done = []
    for digest, res, users in extra:
        if res is not None and res.state == LOST and store.content.verify(digest, res.length):
            _set_state(store, digest, COMPLETE)
            done.append(f"restored lost content {digest.hex()}: an intact blob is back in the pool ({users})")
        elif res is not None and res.state == LOST:
            moved = to_lost_and_found(store, digest)
            done.append(f"moved blob {digest.hex()} of lost content, still damaged, to {moved}")
        else:
            store.blobs.delete(digest)
            done.append(f"deleted blob {digest.hex()}, which no complete content names")
    return done


def leave_cycles(store: Store) -> list[str]:
    """Directory cycles are reported, not repaired: which entry to cut is the owner's choice."""
    with Inspection.over(store.catalog, store.path) as ins:
        return [f"not repaired (remove one of these entries by hand): {line}" for line in fsck.no_directory_cycles(ins)]


# -- helpers ---------------------------------------------------------------------------------------------------


def _set_state(store: Store, digest: bytes, state: int) -> None:
    with store.catalog.write() as tx:
        res = tx.resource(digest)
        assert res is not None, f"no resource {digest.hex()}"
        if state == COMPLETE:
            store.content.complete(tx, digest)  # listed as unsynced: the closing checkpoint makes it durable
        else:
            res.state = state
            tx.save_resource(res)


def _lose(store: Store, digest: bytes) -> str | None:
    """Mark a content lost and move what is left of its blob aside; where it went, if anywhere."""
    moved = to_lost_and_found(store, digest)
    _set_state(store, digest, LOST)
    return moved


def to_lost_and_found(store: Store, digest: bytes) -> str | None:
    """Move the digest's blob file, if any, to ``<store>/lost+found/<hex>`` (``.1``, ``.2``... when taken)."""
    h = digest.hex()
    source = Path(blob_path(store.path / "pool", digest))
    if not source.exists():
        return None
    directory = store.path / LOST_AND_FOUND
    private.make_dirs(directory)
    target, n = directory / h, 0
    while target.exists():
        n += 1
        target = directory / f"{h}.{n}"
    os.rename(source, target)
    os.chmod(target, private.FILE_MODE)  # a blob of an older store may be more open
    return str(Path(LOST_AND_FOUND) / target.name)


def _entry_path(ins: Inspection, parent: int, name: bytes) -> str:
    above = ins.path_of(parent)
    return f"{above.rstrip('/') if above is not None else f'<inode {parent}>'}/{decode_name(name)}"


_KINDS: dict[int, str] = {stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
                          stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
                          stat.S_IFBLK: "block device"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), f"mode {mode:o}")
