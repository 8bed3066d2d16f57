"""What the packs' bookkeeping must add up to, checked by counting: the crash and fault tests' common finding.

A bug that keeps a chunk or a pack alive for nothing (a partial store that
recovery did not release, a reference taken twice) or frees one still in
use shows here as a count that does not match, whatever fsck checks.
"""

from __future__ import annotations

from collections import Counter

from fusestore import Store
from fusestore.catalog import LAYOUT_CHUNKS


def accounting_problems(store: Store, *, settled: bool = True) -> list[str]:
    """Each mismatch of refcounts, live bytes, extents and pack files.

    ``settled``: the store was just opened, so no pack is open and none
    sealed with nothing live (a rollover leaves such packs to the next open).
    """
    problems: list[str] = []
    with store.catalog.read() as tx:
        uses: Counter[bytes] = Counter()
        ends: dict[bytes, int] = {}
        for digest, extent in tx.all_extents():
            uses[extent.chunk] += extent.count
            if extent.start != ends.get(digest, 0):
                problems.append(f"content {digest.hex()} has a gap or overlap at {extent.start}")
            ends[digest] = extent.end
        chunks = {chunk.digest: chunk for chunk in tx.chunks()}
        packs = {pack.pack: pack for pack in tx.packs()}
        live: Counter[int] = Counter()
        for chunk in chunks.values():
            live[chunk.pack] += chunk.stored
            if chunk.refcount != uses[chunk.digest]:
                problems.append(f"chunk {chunk.digest.hex()} counts {chunk.refcount} uses, extents make "
                                f"{uses[chunk.digest]}")
            if chunk.pack not in packs:
                problems.append(f"chunk {chunk.digest.hex()} is in pack {chunk.pack:016x}, which has no row")
        problems += [f"extents name the chunk {d.hex()}, which has no row" for d in uses if d not in chunks]
        for pack in packs.values():
            if pack.live != live[pack.pack]:
                problems.append(f"pack {pack.pack:016x} counts {pack.live} live bytes, its chunks {live[pack.pack]}")
            if settled and pack.sealed and pack.live == 0:
                problems.append(f"pack {pack.pack:016x} is sealed with nothing live, and not freed")
            if settled and not pack.sealed:
                problems.append(f"pack {pack.pack:016x} is still open")
        index = {(pack, offset): digest for pack, offset, digest in tx.pack_index()}
        if index != {(c.pack, c.offset): c.digest for c in chunks.values()}:
            problems.append("the packchunks index does not match the chunk rows")
        for resource in tx.resources():
            if resource.layout == LAYOUT_CHUNKS and resource.complete \
                    and ends.get(resource.digest, 0) != resource.length:
                problems.append(f"content {resource.digest.hex()} of {resource.length} bytes has extents "
                                f"up to {ends.get(resource.digest, 0)}")
        problems += [f"extents of {d.hex()}, which has no resource" for d in ends if tx.resource(d) is None]
    files = set(store.packs.packs())
    going = {int.from_bytes(key, "big") for key in store.content.deleting() if len(key) == 8}
    problems += [f"pack {p:016x} has a row and no file" for p in sorted(set(packs) - files)]
    problems += [f"pack file {p:016x} has no row" for p in sorted(files - set(packs) - going)]
    return problems
