"""Consistency checks of chunks and packs (the invariants 15 to 19 of docs/FORMAT.md), for ``fsck``.

Each check is a function of an ``Inspection`` yielding one line per broken
instance, as in ``fsck``, which lists them in its ``CHECKS`` (and
``chunks_hash_to_their_names``, which reads every pack, in its
``DEEP_CHECKS``). ``chunk_damage`` and ``first_gap`` are also what
``repair`` decides by.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator

import blake3

from ..catalog import LAYOUT_CHUNKS, LAYOUT_WHOLE_BLOB, LOST, U64, Chunk, Extent, Resource
from ..pool.codec import DamagedChunk, decode
from .inspect import Inspection

Progress = Callable[[int, int], None]  # (bytes read, files finished) since the last call


def used_by(ins: Inspection, digest: bytes) -> str:
    """`` (used by /env/a, /env/b, ...)`` for a content, or nothing: the end of a problem's line."""
    return listed(ins.paths_using(digest))


def listed(paths: list[str]) -> str:
    if not paths:
        return ""
    more = f", and {len(paths) - 3} more" if len(paths) > 3 else ""
    return f" (used by {', '.join(paths[:3])}{more})"


def _chunk_used_by(ins: Inspection, digest: bytes) -> str:
    return listed(ins.paths_using_chunk(digest))


def pack_name(pack: int) -> str:
    return f"pack {pack:016x}"


# -- chunks and packs ---------------------------------------------------------------------------------------


def extents_cover_their_contents(ins: Inspection) -> Iterator[str]:
    """A complete chunked content's extents cover [0, length) end to end, a pending one's a prefix of it; a lost
    or whole-blob content has none, nor has a digest without a resource."""
    for digest, extents in ins.extent_map().items():
        res = ins.resource(digest)
        if res is None:
            yield f"content {digest.hex()} has {len(extents)} extents but no resource"
        elif res.layout == LAYOUT_WHOLE_BLOB:
            yield f"resource {digest.hex()} is a whole-file blob but has {len(extents)} extents{used_by(ins, digest)}"
        elif res.layout != LAYOUT_CHUNKS:
            continue  # resources_are_well_formed says it
        elif res.state == LOST:
            yield f"resource {digest.hex()} is lost but still has {len(extents)} extents{used_by(ins, digest)}"
        else:
            gap = first_gap(extents, res)
            if gap is not None:
                yield f"resource {digest.hex()} ({res.length} bytes) {gap}{used_by(ins, digest)}"
    for res in ins.resources():
        if res.complete and res.layout == LAYOUT_CHUNKS and res.length > 0 and res.digest not in ins.extent_map():
            yield f"resource {res.digest.hex()} ({res.length} bytes) has no extents{used_by(ins, res.digest)}"


def first_gap(extents: list[Extent], res: Resource) -> str | None:
    """How the extents fail to tile the content (a pending one may stop early), or None."""
    covered = 0
    for extent in extents:
        if extent.count < 1 or extent.length < 1:
            return f"has an extent ending at {extent.end} of {extent.count} chunks of {extent.length} bytes"
        if extent.start != covered:
            return f"has extents covering up to {covered}, then one from {extent.start}"
        covered = extent.end
    if covered > res.length:
        return f"has extents covering {covered} bytes"
    if res.complete and covered != res.length:
        return f"has extents covering only its first {covered} bytes"
    return None


def extents_name_their_chunks(ins: Inspection) -> Iterator[str]:
    """Every extent's chunk has a row, of the extent's chunk length."""
    for digest, extents in ins.extent_map().items():
        for extent in extents:
            chunk = ins.chunk(extent.chunk)
            if chunk is None:
                yield (f"content {digest.hex()} names chunk {extent.chunk.hex()} (at {extent.start}), "
                       f"which has no row{used_by(ins, digest)}")
            elif chunk.length != extent.length:
                yield (f"content {digest.hex()} names chunk {extent.chunk.hex()} as {extent.length} bytes, "
                       f"its row says {chunk.length}{used_by(ins, digest)}")


def chunk_refcounts_match_extents(ins: Inspection) -> Iterator[str]:
    """Each chunk's refcount is the sum of the counts of the extents naming it; a chunk nothing uses has no row."""
    uses: Counter[bytes] = Counter()
    for extents in ins.extent_map().values():
        for extent in extents:
            uses[extent.chunk] += extent.count
    for chunk in ins.chunks():
        if uses[chunk.digest] == 0:
            yield f"chunk {chunk.digest.hex()} (refcount {chunk.refcount}) has a row but no extent uses it"
        elif chunk.refcount != uses[chunk.digest]:
            yield (f"chunk {chunk.digest.hex()} has refcount {chunk.refcount}, used {uses[chunk.digest]} times"
                   f"{_chunk_used_by(ins, chunk.digest)}")


def chunks_are_in_packs(ins: Inspection) -> Iterator[str]:
    """Every chunk's pack has a row (a pack goes only once nothing live is in it)."""
    for chunk in ins.chunks():
        if ins.tx.pack(chunk.pack) is None:
            yield (f"chunk {chunk.digest.hex()} is in {pack_name(chunk.pack)}, which has no row"
                   f"{_chunk_used_by(ins, chunk.digest)}")


def pack_live_matches_chunks(ins: Inspection) -> Iterator[str]:
    """Each pack's live bytes are the sum of the stored bytes of the chunks located in it."""
    live: Counter[int] = Counter()
    for chunk in ins.chunks():
        live[chunk.pack] += chunk.stored
    for pack in ins.pack_rows():
        if pack.live != live[pack.pack]:
            yield f"{pack_name(pack.pack)} has live {pack.live}, its chunks {live[pack.pack]} stored bytes"


def pack_index_matches_chunks(ins: Inspection) -> Iterator[str]:
    """The index of chunks by place and the chunk rows match one to one."""
    indexed = set()
    for row in ins.pack_index():
        chunk = ins.chunk(row.digest)
        place = f"{pack_name(row.pack)} offset {row.offset}"
        if chunk is None:
            yield f"the index names chunk {row.digest.hex()} at {place}, which has no row"
        elif (chunk.pack, chunk.offset) != (row.pack, row.offset):
            yield (f"the index names chunk {row.digest.hex()} at {place}, its row says "
                   f"{pack_name(chunk.pack)} offset {chunk.offset}")
        else:
            indexed.add(row.digest)
    for chunk in ins.chunks():
        if chunk.digest not in indexed:
            yield (f"chunk {chunk.digest.hex()} at {pack_name(chunk.pack)} offset {chunk.offset} is not in the index"
                   f"{_chunk_used_by(ins, chunk.digest)}")


def chunks_lie_within_their_packs(ins: Inspection) -> Iterator[str]:
    """The chunks of one pack do not overlap, and each lies within its pack's file (a cut-off pack shows here)."""
    files = {file.pack: file.size for file in ins.pack_files()}
    by_pack: dict[int, list[Chunk]] = defaultdict(list)
    for chunk in ins.chunks():
        by_pack[chunk.pack].append(chunk)
    for pack, chunks in sorted(by_pack.items()):
        chunks.sort(key=lambda chunk: chunk.offset)
        for before, after in zip(chunks, chunks[1:], strict=False):
            if before.offset + before.stored > after.offset:
                yield (f"chunks {before.digest.hex()} and {after.digest.hex()} overlap in {pack_name(pack)} "
                       f"(at {before.offset} and {after.offset}){_chunk_used_by(ins, after.digest)}")
        size = files.get(pack)
        for chunk in chunks:
            if size is not None and chunk.offset + chunk.stored > size:
                yield (f"chunk {chunk.digest.hex()} ends at {chunk.offset + chunk.stored} in {pack_name(pack)}, "
                       f"whose file has {size} bytes{_chunk_used_by(ins, chunk.digest)}")


def sealed_pack_sizes_match_files(ins: Inspection) -> Iterator[str]:
    """A sealed pack's size is its file's length (sealed packs never change)."""
    files = {file.pack: file.size for file in ins.pack_files()}
    for pack in ins.pack_rows():
        size = files.get(pack.pack)
        if pack.sealed and size is not None and size != pack.size:
            yield f"sealed {pack_name(pack.pack)} has size {pack.size}, its file {size} bytes"


def packs_have_files(ins: Inspection) -> Iterator[str]:
    """Every pack row has its file; an empty unsealed pack without one is what a crash between the two leaves.

    That one is no damage: the next open seals and frees it (``recovery_plan`` says so).
    """
    files = {file.pack for file in ins.pack_files()}
    for pack in ins.pack_rows():
        if pack.pack in files or _unborn(pack.sealed, pack.live):
            continue
        chunks = [chunk for digest in ins.tx.chunks_in_pack(pack.pack) if (chunk := ins.chunk(digest)) is not None]
        paths = sorted({path for chunk in chunks for path in ins.paths_using_chunk(chunk.digest)})
        yield f"{pack_name(pack.pack)} ({pack.live} live bytes, {len(chunks)} chunks) has no file{listed(paths)}"


def _unborn(sealed: bool, live: int) -> bool:
    """A pack row whose file may not exist yet: the row is written first, and nothing is in it."""
    return not sealed and live == 0


def pack_files_have_rows(ins: Inspection) -> Iterator[str]:
    """Every pack file has a pack row (a pack's row goes only once it is freed, and its file after)."""
    rows = {pack.pack for pack in ins.pack_rows()}
    going = {U64.unpack(key)[0] for key in ins.freed() if len(key) == U64.size} if ins.live else set()
    for file in ins.pack_files():
        if file.pack not in rows | going:
            yield f"{pack_name(file.pack)} ({file.size} bytes) has a file but no row"


def packs_directory_holds_only_packs(ins: Inspection) -> Iterator[str]:
    """``packs/`` holds nothing but pack files, named by 16 lowercase hex digits."""
    for path in ins.pack_debris():
        yield f"{path} is in packs/ but is not a pack"


def chunks_hash_to_their_names(ins: Inspection, progress: Progress | None = None) -> Iterator[str]:
    """Every chunk's stored bytes decode to bytes that hash to its name (reads every pack: not in ``CHECKS``)."""
    for chunk, why in damaged_chunks(ins, progress):
        yield damaged_message(ins, chunk, why)


def damaged_chunks(ins: Inspection, progress: Progress | None = None) -> Iterator[tuple[Chunk, str]]:
    """Each chunk whose bytes are not there or not its own, and why (``progress``: stored bytes, chunks done)."""
    for chunk in sorted(ins.chunks(), key=lambda chunk: (chunk.pack, chunk.offset)):
        why = chunk_damage(ins, chunk)
        if progress is not None:
            progress(chunk.stored, 1)
        if why is not None:
            yield chunk, why


def chunk_damage(ins: Inspection, chunk: Chunk) -> str | None:
    try:
        stored = ins.stored_bytes_of(chunk)
    except FileNotFoundError:
        return f"is in {pack_name(chunk.pack)}, whose file is missing"
    if len(stored) != chunk.stored:
        return f"is cut off: its pack holds {len(stored)} of its {chunk.stored} stored bytes"
    try:
        data = decode(chunk.codec, stored, chunk.length)
    except DamagedChunk as exc:
        return f"does not decode: {exc}"
    digest = blake3.blake3(data).digest()
    return None if digest == chunk.digest else f"holds bytes that hash to {digest.hex()}"


def damaged_message(ins: Inspection, chunk: Chunk, why: str) -> str:
    return (f"chunk {chunk.digest.hex()} ({pack_name(chunk.pack)} offset {chunk.offset}) {why}"
            f"{_chunk_used_by(ins, chunk.digest)}")
