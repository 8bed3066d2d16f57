"""What ``fusestore fsck --repair`` does to a store, and what recovery would do to it.

``recovery_plan`` reads an ``Inspection`` and says what ``Store.open``'s
recovery would do, without doing it (fsck without ``--repair`` changes
nothing). The repairs run on a store this process opened (recovery has run
by then): each is a plain function over its catalog and pool that does one
job and returns one line per change it made, naming the path or the blob.

A chunk that is missing (no row, no pack, no pack file, cut off) or
(``--verify``) damaged cannot be fixed from the store itself: every content
using it becomes *lost*, its extents (and so its chunk uses) dropped, so
that the files using it fail to read with EIO (``errors.ContentLost``)
instead of serving wrong bytes, until the same content is committed again
and completes it. The chunk and pack counts are then recomputed from the
extents that are left: chunk rows nothing uses go, and sealed packs left
with nothing live are freed. Whole-file blobs of older stores are treated
the same way: a missing, short or corrupt one is moved to
``<store>/lost+found/`` and its content is lost.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .. import errors, private
from ..catalog import COMPLETE, LAYOUT_CHUNKS, LAYOUT_WHOLE_BLOB, LOST, PENDING, ROOT_INO, U64, Catalog, Resource
from ..digests import EMPTY_DIGEST
from ..pool.codec import DamagedChunk
from ..pool.local import blob_path
from ..pool.staging import ShortRead
from . import fsck, fsck_packs
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
    for key, _ in ins.unsynced():
        yield _unsynced_plan(ins, key)
    yield from _settle_plan(ins)
    files = set(ins.staging_files())
    for record in ins.staging_records():
        where = ins.describe(record.ino)
        synced = ins.tx.synced(record.name)
        if record.keep and ins.tx.catalog.power_lost and (record.name in files or synced is None):
            yield (f"recovery would drop what was written to {where}, which no fsync covered before the "
                   f"machine went down (staging file {record.name})" if synced is None else
                   f"recovery would commit the first {synced.size} bytes written to {where}, which an fsync "
                   f"made durable before the machine went down (staging file {record.name})")
            continue
        if record.keep and record.name in files:
            size = ins.staging_size(record.name)
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
            extents = ins.extent_map().get(res.digest, [])
            stored = f", and release the {extents[-1].end} bytes of chunks stored for it so far" if extents else ""
            yield (f"recovery would drop the content {res.digest.hex()} ({res.length} bytes), still pending "
                   f"with no upload left to finish it{stored}")
    recorded = {record.name for record in ins.staging_records()}
    for name in ins.staging_files():
        if name.removesuffix(".blob") not in recorded:
            yield f"recovery would delete staging file {name}, which no record names"
    pool = {blob.digest for blob in ins.blobs()}
    packs = {file.pack for file in ins.pack_files()}
    for digest in ins.freed():
        if len(digest) == U64.size:
            pack = U64.unpack(digest)[0]
            yield (f"recovery would delete pack {pack:016x}, freed before the store was closed" if pack in packs
                   else f"recovery would forget that pack {pack:016x} was freed: it is gone already")
            continue
        held = ins.resource(digest)
        if held is not None and held.complete:
            yield f"recovery would forget that blob {digest.hex()} was freed: its content is in use again"
        elif digest in pool:
            yield f"recovery would delete blob {digest.hex()}, freed before the store was closed"
        else:
            yield f"recovery would forget that blob {digest.hex()} was freed: it is gone already"


def _unsynced_plan(ins: Inspection, key: bytes) -> str:
    """What recovery does with a pack (or an older store's blob) no checkpoint covered."""
    if len(key) == U64.size:
        pack = U64.unpack(key)[0]
        damaged = sorted({content for digest in ins.tx.chunks_in_pack(pack)
                          if (chunk := ins.chunk(digest)) is not None
                          and fsck_packs.chunk_damage(ins, chunk) is not None
                          for content in ins.contents_using_chunk(digest)})
        if not damaged:
            return f"recovery would check pack {pack:016x} (not yet known durable) and find its chunks intact"
        users = "; ".join(f"{digest.hex()}: {_users(ins, digest)}" for digest in damaged)
        return (f"recovery would empty the files using contents whose chunks in pack {pack:016x} did not reach "
                f"the disk (unless a staging file still holds them): {users}")
    res = ins.resource(key)
    if res is None or not res.complete or _intact(ins, key, res.length):
        return (f"recovery would check blob {key.hex()} (not yet known durable) and find it intact "
                f"(used by {_users(ins, key)})")
    return (f"recovery would empty the files using blob {key.hex()}, whose bytes did not reach the "
            f"disk, and delete it: {_users(ins, key)}")


def _settle_plan(ins: Inspection) -> Iterator[str]:
    """What ``Chunks.settle`` does at open: seal the packs left open, delete the pack files the catalog lacks."""
    files = {file.pack for file in ins.pack_files()}
    rows = set()
    for pack in ins.pack_rows():
        rows.add(pack.pack)
        if pack.sealed:
            continue
        if pack.pack not in files and pack.live == 0:
            yield (f"recovery would free pack {pack.pack:016x}: a crash came between its row and its file, "
                   "and nothing is in it")
        elif pack.pack not in files:
            yield f"recovery would seal pack {pack.pack:016x}, left open, whose file is missing"
        else:
            yield f"recovery would seal pack {pack.pack:016x}, left open"
    freed = {U64.unpack(key)[0] for key in ins.freed() if len(key) == U64.size}
    for pack_id in sorted(files - rows - freed):
        yield f"recovery would delete pack file {pack_id:016x}, which the catalog does not know"


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


def repair(store: Store, corrupt: set[bytes], damaged: set[bytes]) -> list[str]:
    """Every repair, in an order where each leaves the next less to do.

    ``corrupt``: blobs ``--verify`` found bad; ``damaged``: chunks it found bad.
    """
    done: list[str] = []
    for job in (remove_dangling_entries, free_nameless_inodes, fix_nlinks, fix_refcounts):
        done += job(store)
    done += lose_damaged_blobs(store, corrupt)
    done += lose_damaged_chunks(store, damaged)
    done += settle_pending(store)
    for job in (drop_stray_extents, fix_chunk_refcounts, fix_pack_index, fix_pack_sizes, fix_pack_live,
                clear_extra_blobs, leave_cycles):
        done += job(store)
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
                layout = LAYOUT_CHUNKS if next(tx.extents(digest), None) is not None else LAYOUT_WHOLE_BLOB
                intact = _chunks_intact(store, digest, length) if layout == LAYOUT_CHUNKS \
                    else store.content.verify(digest, length)
                state = COMPLETE if intact else LOST
                if state == LOST:
                    tx.delete_extents(digest)  # the chunk counts follow (fix_chunk_refcounts)
                tx.save_resource(Resource(digest, length, count, state, layout))
                done.append(f"made the missing resource {digest.hex()} ({length} bytes, refcount {count}, "
                            f"{'complete' if state == COMPLETE else 'lost: no intact bytes'}; "
                            f"used by {described[digest]})")
    return done


def lose_damaged_blobs(store: Store, corrupt: set[bytes]) -> list[str]:
    """A complete content whose blob is missing, of the wrong length or corrupt is marked lost (see the docstring)."""
    with Inspection.over(store.catalog, store.path) as ins:
        present = {blob.digest: blob for blob in ins.blobs()}
        damaged = []
        for res in ins.resources():
            if not res.complete or res.digest == EMPTY_DIGEST or res.layout != LAYOUT_WHOLE_BLOB:
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


def lose_damaged_chunks(store: Store, damaged: set[bytes]) -> list[str]:
    """A chunked content with a chunk that is missing or (``damaged``, checked again) corrupt, or extents that
    do not cover it, is marked lost: its extents go (see the module docstring)."""
    with Inspection.over(store.catalog, store.path) as ins:
        bad = _missing_chunks(ins)
        bad.update({digest: "does not hash to its name" for digest in damaged
                    if (chunk := ins.chunk(digest)) is not None and not store.chunks.intact(chunk)})
        lost = []
        for res in ins.resources():
            if not res.complete or res.layout != LAYOUT_CHUNKS:
                continue
            digest, extents = res.digest, ins.extent_map().get(res.digest, [])
            named = sorted({extent.chunk for extent in extents if extent.chunk in bad})
            why = (f"its chunk {named[0].hex()} {bad[named[0]]}" + (f" (and {len(named) - 1} more)" if len(named) > 1
                                                                     else "")) if named else None
            gap = fsck_packs.first_gap(extents, res)
            if why is not None or gap is not None:
                lost.append((digest, why or f"it {gap}", _users(ins, digest)))
    done = []
    for digest, why, users in lost:
        _set_state(store, digest, LOST)
        done.append(f"marked content {digest.hex()} lost: {why}; these read EIO until the same bytes are "
                    f"written again: {users}")
    return done


def _missing_chunks(ins: Inspection) -> dict[bytes, str]:
    """Chunks some extent names whose bytes are not where the catalog says, and why (no reading but sizes)."""
    files = {file.pack: file.size for file in ins.pack_files()}
    missing: dict[bytes, str] = {}
    for extents in ins.extent_map().values():
        for extent in extents:
            chunk = ins.chunk(extent.chunk)
            if chunk is None:
                missing[extent.chunk] = "has no row"
            elif chunk.length != extent.length:
                missing[extent.chunk] = f"has {chunk.length} bytes, not {extent.length}"
            elif ins.tx.pack(chunk.pack) is None:
                missing[extent.chunk] = f"is in pack {chunk.pack:016x}, which has no row"
            elif chunk.pack not in files:
                missing[extent.chunk] = f"is in pack {chunk.pack:016x}, whose file is missing"
            elif chunk.offset + chunk.stored > files[chunk.pack]:
                missing[extent.chunk] = f"lies past the end of pack {chunk.pack:016x}"
    return missing


def _chunks_intact(store: Store, digest: bytes, length: int) -> bool:
    """Whether a content's extents read back as exactly the bytes of ``digest`` (whatever its resource says)."""
    reader = store.chunks.open(digest, length, verify=True, on_damage=_refuse)
    try:
        return reader.hash() == (digest, length)
    except (errors.BadContent, FileNotFoundError, ShortRead, DamagedChunk):
        return False
    finally:
        reader.close()


def _refuse(what: str) -> NoReturn:
    raise errors.BadContent(what)


def settle_pending(store: Store) -> list[str]:
    """A pending resource no upload reserved (recovery undid them all): complete when intact, else lost."""
    with Inspection.over(store.catalog, store.path) as ins:
        reserved = {record.expected for record in ins.staging_records() if record.reserved}
        pending = [(res, _users(ins, res.digest)) for res in ins.resources()
                   if res.state == PENDING and res.digest not in reserved]
    done = []
    for res, users in pending:
        if store.content.verify(res.digest, res.length):
            with store.catalog.write() as tx:
                store.content.complete(tx, res.digest)
            done.append(f"completed pending resource {res.digest.hex()}: its bytes are intact (used by {users})")
        else:
            moved = _lose(store, res.digest)
            where = f" (its damaged blob moved to {moved})" if moved else ""
            done.append(f"marked pending resource {res.digest.hex()} lost: no intact bytes{where}; these read EIO "
                        f"until the same bytes are written again: {users}")
    return done


def drop_stray_extents(store: Store) -> list[str]:
    """Extents of a content that has no resource, is lost or is a whole-file blob go (their chunk uses with them)."""
    with Inspection.over(store.catalog, store.path) as ins:
        stray = []
        for digest in ins.extent_map():
            res = ins.resource(digest)
            if res is None or res.state == LOST or res.layout != LAYOUT_CHUNKS:
                why = "no resource" if res is None else "a lost resource" if res.state == LOST \
                    else "a whole-file blob"
                stray.append((digest, why))
    with store.catalog.write() as tx:
        for digest, _ in stray:
            tx.delete_extents(digest)
    return [f"dropped the extents of content {digest.hex()}, which has {why}" for digest, why in stray]


def fix_chunk_refcounts(store: Store) -> list[str]:
    """Chunk refcounts become the uses the extents count; a chunk row nothing uses goes."""
    with Inspection.over(store.catalog, store.path) as ins:
        uses: Counter[bytes] = Counter()
        for extents in ins.extent_map().values():
            for extent in extents:
                uses[extent.chunk] += extent.count
        wrong = [chunk for chunk in ins.chunks() if chunk.refcount != uses[chunk.digest]]
    done = []
    with store.catalog.write() as tx:
        for chunk in wrong:
            if uses[chunk.digest] == 0:
                tx.delete_chunk(chunk)
                done.append(f"deleted chunk {chunk.digest.hex()} (refcount {chunk.refcount}), which nothing uses")
                continue
            done.append(f"set the refcount of chunk {chunk.digest.hex()} from {chunk.refcount} to "
                        f"{uses[chunk.digest]}")
            chunk.refcount = uses[chunk.digest]
            tx.save_chunk(chunk)
    return done


def fix_pack_index(store: Store) -> list[str]:
    """Index rows that are not a chunk row's place go; a chunk row missing from the index gets its row."""
    with Inspection.over(store.catalog, store.path) as ins:
        stray = [row for row in ins.pack_index()
                 if (chunk := ins.chunk(row.digest)) is None or (chunk.pack, chunk.offset) != (row.pack, row.offset)]
        indexed = {(row.pack, row.offset, row.digest) for row in ins.pack_index()}
        unlisted = [chunk for chunk in ins.chunks() if (chunk.pack, chunk.offset, chunk.digest) not in indexed]
    with store.catalog.write() as tx:
        for row in stray:
            tx.delete_index_row(row.pack, row.offset)
        for chunk in unlisted:
            tx.add_chunk(chunk)
    return ([f"deleted the index row of pack {row.pack:016x} offset {row.offset}, which is not chunk "
             f"{row.digest.hex()}'s place" for row in stray]
            + [f"indexed chunk {chunk.digest.hex()} at pack {chunk.pack:016x} offset {chunk.offset}"
               for chunk in unlisted])


def fix_pack_sizes(store: Store) -> list[str]:
    """A sealed pack's size becomes its file's length (the chunks past a cut were lost before this runs)."""
    with Inspection.over(store.catalog, store.path) as ins:
        files = {file.pack: file.size for file in ins.pack_files()}
        wrong = [(pack, files[pack.pack]) for pack in ins.pack_rows()
                 if pack.sealed and pack.pack in files and files[pack.pack] != pack.size]
    with store.catalog.write() as tx:
        for pack, size in wrong:
            pack.size = size
            tx.save_pack(pack)
    return [f"set the size of sealed pack {pack.pack:016x} to its file's {size} bytes" for pack, size in wrong]


def fix_pack_live(store: Store) -> list[str]:
    """Pack live bytes become the stored bytes of their chunks; a sealed pack with nothing live is freed."""
    done = []
    with store.catalog.write() as tx:
        live: Counter[int] = Counter()
        for chunk in tx.chunks():
            live[chunk.pack] += chunk.stored
        for pack in list(tx.packs()):
            if pack.sealed and live[pack.pack] == 0:
                store.chunks.free_pack(tx, pack.pack)
                done.append(f"freed sealed pack {pack.pack:016x} (live {pack.live}), which holds no chunk in use")
            elif pack.live != live[pack.pack]:
                done.append(f"set the live bytes of pack {pack.pack:016x} from {pack.live} to {live[pack.pack]}")
                pack.live = live[pack.pack]
                tx.save_pack(pack)
    return done


def clear_extra_blobs(store: Store) -> list[str]:
    """Blobs no complete whole-blob content names are deleted; the intact blob of a lost content completes it."""
    with Inspection.over(store.catalog, store.path) as ins:
        extra = []
        for blob in ins.blobs():
            res = ins.resource(blob.digest)
            if res is None or not res.complete or res.layout != LAYOUT_WHOLE_BLOB:
                extra.append((blob.digest, res, _users(ins, blob.digest)))
    done = []
    for digest, res, users in extra:
        if (res is not None and res.state == LOST and res.layout == LAYOUT_WHOLE_BLOB
                and store.content.verify(digest, res.length)):
            _set_state(store, digest, COMPLETE)
            done.append(f"restored lost content {digest.hex()}: an intact blob is back in the pool ({users})")
        elif res is not None and res.state == LOST:
            moved = to_lost_and_found(store, digest)
            done.append(f"moved blob {digest.hex()} of lost content, still damaged, to {moved}")
        else:
            store.blobs.delete(digest)
            done.append(f"deleted blob {digest.hex()}, which no complete whole-blob content names")
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
            tx.delete_extents(digest)  # a lost content holds no chunk: fix_chunk_refcounts counts again


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
