"""Consistency checks of a store: the invariants of docs/FORMAT.md, one named check each.

A check is a function of an ``Inspection`` that yields one readable line per
broken instance of its invariant, naming the digest or pack and the paths of
the files affected (those of chunks and packs are in ``fsck_packs``). The
checks in ``CHECKS`` hold at every moment nothing is in flight: on a closed
store, and on an open one between operations (tests run them after every
step). ``DEEP_CHECKS`` read every chunk and blob. ``fusestore fsck`` runs them all
(``store.repair`` fixes what they find); ``lost_contents`` lists the files
an earlier repair left unreadable, which is a notice, not a problem.
"""

from __future__ import annotations

import os
import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog import COMPLETE, LOST, PENDING, ROOT_INO, Resource, verify_structure
from ..catalog.records import LAYOUT_CHUNKS, LAYOUT_WHOLE_BLOB, U64
from ..digests import EMPTY_DIGEST, hash_fd
from . import names
from .fsck_packs import (
    chunk_refcounts_match_extents,
    chunks_are_in_packs,
    chunks_hash_to_their_names,
    chunks_lie_within_their_packs,
    extents_cover_their_contents,
    extents_name_their_chunks,
    pack_files_have_rows,
    pack_index_matches_chunks,
    pack_live_matches_chunks,
    pack_name,
    packs_directory_holds_only_packs,
    packs_have_files,
    sealed_pack_sizes_match_files,
    used_by,
)
from .inspect import BlobFile, Inspection, decode_name
from .namespace import GLOBAL_DIR, USERS_DIR

if TYPE_CHECKING:
    from .store import Store

Check = Callable[[Inspection], Iterator[str]]
Progress = Callable[[int, int], None]  # (bytes read, files finished) since the last call


@dataclass(frozen=True)
class Problem:
    """One broken invariant: the check that found it and a line naming what is wrong."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


# -- helpers ------------------------------------------------------------------------------


def _entry_path(ins: Inspection, parent: int, name: bytes) -> str:
    above = ins.path_of(parent)
    where = above.rstrip("/") if above is not None else f"<inode {parent}>"
    return f"{where}/{decode_name(name)}"


def references(ins: Inspection) -> Counter[bytes]:
    """References each digest should have: inodes whose content it is, uploads that reserved it, edits based on it."""
    references: Counter[bytes] = Counter()
    for node in ins.inode_map().values():
        if stat.S_ISREG(node.mode) and node.content is not None:
            references[node.content] += 1
    for record in ins.staging_records():
        if record.reserved and record.expected is not None:
            references[record.expected] += 1
        if record.base is not None:
            references[record.base] += 1
    return references


def _subdirectories(ins: Inspection) -> dict[int, list[int]]:
    """The directories each directory's entries name (the graph a tree walk follows)."""
    inodes = ins.inode_map()
    below: dict[int, list[int]] = defaultdict(list)
    for parent, _, child in ins.entries():
        node = inodes.get(child)
        if node is not None and stat.S_ISDIR(node.mode):
            below[parent].append(child)
    return below


def _wanted_blobs(ins: Inspection) -> set[bytes]:
    """The contents whose bytes are a whole-file blob of the pool (stores of format 2)."""
    return {res.digest for res in ins.resources()
            if res.complete and res.layout == LAYOUT_WHOLE_BLOB and res.digest != EMPTY_DIGEST}


def cut_short(res: Resource) -> bool:
    """A pending resource nothing references: what ``Chunks.store`` leaves while it stores, or when a crash cut
    it short (recovery drops it, and its extents, which must be a prefix of it)."""
    return res.state == PENDING and res.refcount == 0


# -- the namespace -----------------------------------------------------------------------------


def root_and_namespaces_exist(ins: Inspection) -> Iterator[str]:
    """The root is a directory that is its own parent, holding the ``.global`` and ``.users`` directories."""
    root = ins.inode(ROOT_INO)
    if root is None or not stat.S_ISDIR(root.mode):
        yield f"the root (inode {ROOT_INO}) is missing or not a directory"
        return
    if root.parent != ROOT_INO:
        yield f"the root's parent is inode {root.parent}, not itself"
    for name in (GLOBAL_DIR, USERS_DIR):
        child = ins.tx.lookup(ROOT_INO, name)
        node = ins.inode(child) if child is not None else None
        if node is None or not stat.S_ISDIR(node.mode):
            yield f"/{name.decode()} is missing or not a directory"


def entry_names_are_valid(ins: Inspection) -> Iterator[str]:
    """Every name is a path component; ``/`` holds only environments and the two namespaces, ``/.users`` users."""
    users = ins.tx.lookup(ROOT_INO, USERS_DIR)
    for parent, name, _ in ins.entries():
        path = _entry_path(ins, parent, name)
        try:
            names.component(name)
            if parent == users:
                names.user(decode_name(name))
        except ValueError as exc:
            yield f"{path!r} is not a valid name: {exc}"
            continue
        if parent == ROOT_INO and name not in (GLOBAL_DIR, USERS_DIR) and not names.is_environment(name):
            yield f"{path!r} in / is not an environment (a canonical lowercase UUID)"


def entries_point_at_inodes(ins: Inspection) -> Iterator[str]:
    """Every directory entry names an existing inode."""
    inodes = ins.inode_map()
    for parent, name, child in ins.entries():
        if child not in inodes:
            yield f"entry {_entry_path(ins, parent, name)} points at missing inode {child}"


def entries_are_in_directories(ins: Inspection) -> Iterator[str]:
    """Every directory entry belongs to an existing directory."""
    for parent, name, _ in ins.entries():
        node = ins.inode(parent)
        if node is None or not stat.S_ISDIR(node.mode):
            yield f"entry {decode_name(name)!r} is in inode {parent}, which is not an existing directory"


def nlink_matches_entries(ins: Inspection) -> Iterator[str]:
    """A file's link count is the number of entries naming it; a directory's is 2 plus its subdirectories."""
    inodes = ins.inode_map()
    links: Counter[int] = Counter()
    subdirectories: Counter[int] = Counter()
    for parent, _, child in ins.entries():
        links[child] += 1
        node = inodes.get(child)
        if node is not None and stat.S_ISDIR(node.mode):
            subdirectories[parent] += 1
    for node in inodes.values():
        expected = 2 + subdirectories[node.ino] if stat.S_ISDIR(node.mode) else links[node.ino]
        if node.nlink != expected:
            yield f"{ins.describe(node.ino)} has nlink {node.nlink}, expected {expected}"


def directories_have_parents(ins: Inspection) -> Iterator[str]:
    """Every directory but the root has exactly one entry, in the directory its ``parent`` field names."""
    for node in ins.inode_map().values():
        if not stat.S_ISDIR(node.mode) or node.ino == ROOT_INO:
            continue
        entries = ins.names_of(node.ino)
        if len(entries) != 1:
            yield f"directory {ins.describe(node.ino)} is named by {len(entries)} entries, not 1"
        elif entries[0][0] != node.parent:
            yield (f"directory {ins.describe(node.ino)} has parent field {node.parent} "
                   f"but its entry is in inode {entries[0][0]}")


def directories_reach_the_root(ins: Inspection) -> Iterator[str]:
    """Following ``parent`` fields from any directory reaches the root (no cycle, no dangling parent)."""
    inodes = ins.inode_map()
    reaches = {ROOT_INO}
    for node in inodes.values():
        if not stat.S_ISDIR(node.mode):
            continue
        chain: list[int] = []
        current: int | None = node.ino
        while current is not None and current not in reaches:
            if current in chain:
                yield f"directory {ins.describe(node.ino)} is in a cycle of parent fields"
                break
            chain.append(current)
            above = inodes.get(current)
            current = above.parent if above is not None and stat.S_ISDIR(above.mode) else None
        else:
            if current is None:
                yield f"directory {ins.describe(node.ino)} has a parent chain that ends before the root"
            else:
                reaches.update(chain)


def no_directory_cycles(ins: Inspection) -> Iterator[str]:
    """No directory is inside itself through entries (a tree walk such as ``find`` would never end)."""
    below = _subdirectories(ins)
    done: set[int] = set()
    for start in sorted(below):  # the root first
        if start in done:
            continue
        path, todo = [start], [list(below[start])]  # the walk down, and what each level has left to visit
        while path:
            if not todo[-1]:
                done.add(path.pop())
                todo.pop()
                continue
            child = todo[-1].pop()
            if child in path:
                cycle = path[path.index(child):] + [child]
                yield "directories in a cycle of entries: " + " -> ".join(ins.describe(ino) for ino in cycle)
            elif child not in done:
                path.append(child)
                todo.append(list(below.get(child, [])))


def spaces_follow_the_tree(ins: Inspection) -> Iterator[str]:
    """Each inode's space is its namespace root: entries of ``/`` and ``/.users`` are their own (``.users`` none)."""
    inodes = ins.inode_map()
    for parent, name, child in ins.entries():
        above, node = inodes.get(parent), inodes.get(child)
        if above is None or node is None:
            continue  # reported by the checks of entries
        if parent == ROOT_INO:
            expected = 0 if name == USERS_DIR else child
        else:
            expected = child if above.space == 0 else above.space
        if node.space != expected:
            yield f"{_entry_path(ins, parent, name)} (inode {child}) has space {node.space}, expected {expected}"


def xattrs_belong_to_inodes(ins: Inspection) -> Iterator[str]:
    """Every extended attribute belongs to an existing inode (deleting an inode deletes its attributes)."""
    inodes = ins.inode_map()
    for ino, name, _ in ins.xattrs():
        if ino not in inodes:
            yield f"attribute {decode_name(name)!r} belongs to missing inode {ino}"


def next_ino_is_past_every_inode(ins: Inspection) -> Iterator[str]:
    """The next inode number is above every inode's, so that no new inode takes an existing number."""
    raw = ins.meta().get(b"next_ino")
    following = U64.unpack(raw)[0] if raw is not None else ROOT_INO + 1
    highest = max(ins.inode_map(), default=ROOT_INO)
    if following <= highest:
        yield f"next inode number {following} is not above the highest inode {highest}"


# -- inodes unlinked while open ---------------------------------------------------------------------


def orphans_have_nlink_zero(ins: Inspection) -> Iterator[str]:
    """Every orphan record names an existing inode with no name left."""
    for ino in ins.orphans():
        node = ins.inode(ino)
        if node is None:
            yield f"orphan record names missing inode {ino}"
        elif node.nlink != 0:
            yield f"{ins.describe(ino)} is recorded as an orphan but has nlink {node.nlink}"


def unlinked_inodes_are_orphans(ins: Inspection) -> Iterator[str]:
    """An inode with no name left is recorded as an orphan, so that its last close or recovery deletes it."""
    orphans = set(ins.orphans())
    for node in ins.inode_map().values():
        if node.nlink == 0 and node.ino not in orphans:
            yield f"inode {node.ino} has nlink 0 but no orphan record"


def inodes_have_names(ins: Inspection) -> Iterator[str]:
    """Every inode still linked is reachable: some path of entries leads to it from the root."""
    below: dict[int, list[int]] = defaultdict(list)
    for parent, _, child in ins.entries():
        below[parent].append(child)
    reached, todo = {ROOT_INO}, [ROOT_INO]
    while todo:
        for child in below.get(todo.pop(), []):
            if child not in reached:
                reached.add(child)
                todo.append(child)
    for node in ins.inode_map().values():
        if node.nlink != 0 and node.ino not in reached:  # nlink 0: the orphan checks' business
            named = f"named only in {len(ins.names_of(node.ino))} unreachable entries" if ins.names_of(node.ino) \
                else "no entry names it"
            yield f"inode {node.ino} (mode {node.mode:o}) has no path from the root: {named}"


# -- contents and resources ---------------------------------------------------------------------------


def resources_are_well_formed(ins: Inspection) -> Iterator[str]:
    """Resources have a 32-byte digest, a refcount of at least 1 (0 only while pending: a store in progress or
    cut short), a known state and layout; empty content is empty."""
    for res in ins.resources():
        name = f"resource {res.digest.hex()}"
        if len(res.digest) != 32:
            yield f"{name} has a digest of {len(res.digest)} bytes"
        if res.refcount < 1 and not cut_short(res):
            yield f"{name} has refcount {res.refcount}: a resource goes with its last reference"
        if res.state not in (PENDING, COMPLETE, LOST):
            yield f"{name} has unknown state {res.state}"
        if res.layout not in (LAYOUT_WHOLE_BLOB, LAYOUT_CHUNKS):
            yield f"{name} has unknown layout {res.layout}"
        if res.digest == EMPTY_DIGEST and res.length != 0:
            yield f"{name} (the empty content) has length {res.length}"


def refcounts_match_references(ins: Inspection) -> Iterator[str]:
    """Each resource's refcount equals the files whose content it is plus the uploads that reserved it."""
    counted = references(ins)
    for res in ins.resources():
        if res.refcount != counted[res.digest]:
            yield (f"resource {res.digest.hex()} has refcount {res.refcount}, "
                   f"referenced {counted[res.digest]} times{used_by(ins, res.digest)}")


def referenced_contents_have_resources(ins: Inspection) -> Iterator[str]:
    """Every content a file points at, or an upload reserved, has a resource."""
    for digest in references(ins):
        if ins.resource(digest) is None:
            yield f"content {digest.hex()} is referenced but has no resource{used_by(ins, digest)}"


def file_contents_are_complete(ins: Inspection) -> Iterator[str]:
    """A file points only at complete content: a commit marks the resource complete before it points at it."""
    for node in ins.inode_map().values():
        if stat.S_ISREG(node.mode) and node.content is not None:
            res = ins.resource(node.content)
            if res is not None and res.state == PENDING:
                yield f"{ins.describe(node.ino)} has content {node.content.hex()}, which is still pending"


def pending_resources_are_reserved(ins: Inspection) -> Iterator[str]:
    """A pending resource is held by an upload that reserved it (recovery undoes unfinished ones), nothing else;
    one nothing holds is a store in progress or cut short (recovery drops it)."""
    reserved = {record.expected for record in ins.staging_records() if record.reserved}
    for res in ins.resources():
        if res.state == PENDING and res.digest not in reserved and not cut_short(res):
            yield f"resource {res.digest.hex()} is pending but no upload reserved it{used_by(ins, res.digest)}"


def sizes_match_contents(ins: Inspection) -> Iterator[str]:
    """A file's size is its content's length; a symlink's is its target's."""
    for node in ins.inode_map().values():
        if stat.S_ISREG(node.mode) and node.content is not None:
            res = ins.resource(node.content)
            if res is not None and node.size != res.length:
                yield f"{ins.describe(node.ino)} has size {node.size}, its content {res.length} bytes"
        elif stat.S_ISLNK(node.mode) and node.size != len(node.target):
            yield f"symlink {ins.describe(node.ino)} has size {node.size}, its target {len(node.target)} bytes"


def pending_files_have_uploads(ins: Inspection) -> Iterator[str]:
    """A file without committed content is being uploaded: a staging record names it (recovery ends it)."""
    uploading = {record.ino for record in ins.staging_records()}
    for node in ins.inode_map().values():
        if stat.S_ISREG(node.mode) and node.content is None and node.ino not in uploading:
            yield f"{ins.describe(node.ino)} has no content and no upload that will give it one"


def unsynced_keys_are_known(ins: Inspection) -> Iterator[str]:
    """An unsynced key names a pack the catalog holds, or (older stores) the blob of a complete resource."""
    for key, _ in ins.unsynced():
        if len(key) == U64.size:
            pack = U64.unpack(key)[0]
            if ins.tx.pack(pack) is None:
                yield f"{pack_name(pack)} is listed as unsynced but the catalog has no such pack"
        elif len(key) == 32:
            res = ins.resource(key)
            if res is None or not res.complete:
                yield f"blob {key.hex()} is listed as unsynced but no complete resource names it"
        else:
            yield f"unsynced key {key.hex()} is neither a pack id (8 bytes) nor a digest (32 bytes)"


def freed_packs_have_no_rows(ins: Inspection) -> Iterator[str]:
    """A pack listed as freed has no row (its row goes in the transaction that frees it); keys are 8 or 32 bytes."""
    for key in ins.freed():
        if len(key) == U64.size:
            pack = U64.unpack(key)[0]
            if ins.tx.pack(pack) is not None:
                yield f"{pack_name(pack)} is listed as freed but still has its row"
        elif len(key) != 32:
            yield f"freed key {key.hex()} is neither a pack id (8 bytes) nor a digest (32 bytes)"


# -- the pool -----------------------------------------------------------------------------------------------


def complete_resources_have_blobs(ins: Inspection) -> Iterator[str]:
    """Every complete whole-blob resource (of a format-2 store) but the empty content has its blob in the pool."""
    present = {blob.digest for blob in ins.blobs()}
    for digest in sorted(_wanted_blobs(ins) - present):
        yield f"blob {digest.hex()} is missing from the pool{used_by(ins, digest)}"


def no_stray_blobs(ins: Inspection) -> Iterator[str]:
    """The pool holds no blob that no complete whole-blob resource names (a release deletes the blob with it)."""
    wanted = _wanted_blobs(ins)
    going = set(ins.freed()) if ins.live else set()  # the owner deletes them once their release is durable
    for blob in ins.blobs():
        if blob.digest not in wanted | going:
            res = ins.resource(blob.digest)
            why = ("not referenced" if res is None else "its resource is marked lost" if res.state == LOST
                   else "its resource is still pending" if not res.complete else "its content is stored as chunks")
            yield f"blob {blob.digest.hex()} is in the pool but {why}"


def blob_sizes_match_lengths(ins: Inspection) -> Iterator[str]:
    """Each blob of a complete whole-blob resource is as long as the resource says (a cut-off write shows here)."""
    for blob in ins.blobs():
        res = ins.resource(blob.digest)
        if res is not None and res.complete and res.layout == LAYOUT_WHOLE_BLOB and blob.size != res.length:
            used = used_by(ins, blob.digest)
            yield f"blob {blob.digest.hex()} has {blob.size} bytes, its resource {res.length}{used}"


def pool_holds_only_blobs(ins: Inspection) -> Iterator[str]:
    """The pool holds nothing but blob files at ``pool/ab/cd/<64 hex>`` (and their directories)."""
    for path in ins.pool_debris():
        yield f"{path} is in the pool but is not a blob where one belongs"


# -- staging ----------------------------------------------------------------------------------------------


def staging_records_have_inodes(ins: Inspection) -> Iterator[str]:
    """Every staging record names an existing inode (deleting a file that is written keeps it as an orphan)."""
    inodes = ins.inode_map()
    for record in ins.staging_records():
        if record.ino not in inodes:
            yield f"staging record {record.name} names missing inode {record.ino}"


def reservations_name_a_digest(ins: Inspection) -> Iterator[str]:
    """A staging record that reserved content says which (a 32-byte expected digest)."""
    for record in ins.staging_records():
        if record.reserved and (record.expected is None or len(record.expected) != 32):
            yield f"staging record {record.name} of {ins.describe(record.ino)} reserved no valid digest"


def staging_records_have_files(ins: Inspection) -> Iterator[str]:
    """Every staging record has its staging file (the file is made before the record and goes after it)."""
    files = set(ins.staging_files())
    for record in ins.staging_records():
        if record.name not in files:
            yield f"staging record {record.name} of {ins.describe(record.ino)} has no staging file"


def staging_files_have_records(ins: Inspection) -> Iterator[str]:
    """Every staging file (and spare ``.blob`` name) belongs to a staging record."""
    recorded = {record.name for record in ins.staging_records()}
    for name in ins.staging_files():
        if name.removesuffix(".blob") not in recorded:
            yield f"staging file {name} has no staging record"


CHECKS: list[Check] = [
    root_and_namespaces_exist,
    entry_names_are_valid,
    entries_point_at_inodes,
    entries_are_in_directories,
    nlink_matches_entries,
    directories_have_parents,
    directories_reach_the_root,
    no_directory_cycles,
    spaces_follow_the_tree,
    xattrs_belong_to_inodes,
    next_ino_is_past_every_inode,
    orphans_have_nlink_zero,
    unlinked_inodes_are_orphans,
    inodes_have_names,
    resources_are_well_formed,
    refcounts_match_references,
    referenced_contents_have_resources,
    file_contents_are_complete,
    pending_resources_are_reserved,
    sizes_match_contents,
    pending_files_have_uploads,
    unsynced_keys_are_known,
    freed_packs_have_no_rows,
    extents_cover_their_contents,
    extents_name_their_chunks,
    chunk_refcounts_match_extents,
    chunks_are_in_packs,
    pack_live_matches_chunks,
    pack_index_matches_chunks,
    chunks_lie_within_their_packs,
    sealed_pack_sizes_match_files,
    packs_have_files,
    pack_files_have_rows,
    packs_directory_holds_only_packs,
    complete_resources_have_blobs,
    no_stray_blobs,
    blob_sizes_match_lengths,
    pool_holds_only_blobs,
    staging_records_have_inodes,
    reservations_name_a_digest,
    staging_records_have_files,
    staging_files_have_records,
]


def blobs_hash_to_their_names(ins: Inspection, progress: Progress | None = None) -> Iterator[str]:
    """Every blob's bytes hash to its name (reads the whole pool: not in ``CHECKS``)."""
    for blob, digest in misnamed_blobs(ins, progress):
        yield misnamed_message(ins, blob, digest)


def misnamed_blobs(ins: Inspection, progress: Progress | None = None) -> Iterator[tuple[BlobFile, bytes]]:
    """Each blob whose bytes hash to another digest than its name, with that digest (``progress`` as it reads)."""
    for blob in ins.blobs():
        digest = hash_file(blob.path, progress)
        if digest != blob.digest:
            yield blob, digest


def misnamed_message(ins: Inspection, blob: BlobFile, digest: bytes) -> str:
    return f"blob {blob.digest.hex()} holds bytes that hash to {digest.hex()}{used_by(ins, blob.digest)}"


def hash_file(path: str, progress: Progress | None = None) -> bytes:
    """The BLAKE3 of a file, telling ``progress`` of every piece read (a large blob moves a progress bar too)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        digest, _ = hash_fd(fd, None if progress is None else lambda n: progress(n, 0))
    finally:
        os.close(fd)
    if progress is not None:
        progress(0, 1)
    return digest


DEEP_CHECKS: list[Check] = [chunks_hash_to_their_names, blobs_hash_to_their_names]


def lost_contents(ins: Inspection) -> Iterator[str]:
    """Contents an earlier ``fsck --repair`` marked lost, with the files that read EIO until written again."""
    for res in ins.resources():
        if res.state == LOST:
            paths = ins.paths_using(res.digest)
            users = ", ".join(paths) if paths else "no file"
            yield (f"content {res.digest.hex()} ({res.length} bytes) is lost, reads fail with EIO until "
                   f"the same bytes are written again: {users}")


def catalog_file_problems(store_path: str | os.PathLike[str]) -> list[str]:
    """LMDB's structural audit of ``catalog/data.mdb``, as raw bytes: before LMDB opens a file that may be damaged.

    UnknownFormat when the file is not an LMDB data file at all.
    """
    return verify_structure(Path(store_path) / "catalog")


def run_checks(ins: Inspection, checks: Iterable[Check] = CHECKS) -> list[Problem]:
    """Every problem the checks find, in the order of the checks."""
    return [Problem(check.__name__, message) for check in checks for message in check(ins)]


def find_problems(store: Store) -> list[str]:
    """Every broken invariant of a store open in this process, as a readable line; empty means consistent."""
    with Inspection.over(store.catalog, store.path, frozenset(store.writes.retired())) as ins:
        return [str(problem) for problem in run_checks(ins)]
