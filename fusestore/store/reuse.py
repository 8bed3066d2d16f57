"""What storing an edited content takes from the content it edits (its *base*) as it is.

A FastCDC cut depends on the bytes from the chunk's start up to the byte
just after its end, nothing else. So a base chunk serves the edited content
wherever both hold the same bytes from the chunk's start through the byte
after it: before the first written byte, and after the last one once a cut
of the edited content ends where a base chunk ends (from there on the cuts
are the base's), up to where the base's bytes stop. The chunks taken are
then exactly those a cut from offset 0 would give, without reading the
bytes they cover. ``Chunks.store`` does the cutting in between.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from ..catalog import Catalog, Extent
from .gathering import Gatherer

WINDOW = 1024  # extents of a base content read per transaction


@dataclass(frozen=True)
class Reuse:
    """An edited content's bytes are its base's but in ``[start, end)`` and from ``limit`` on."""

    base: bytes
    start: int  # the first byte written (or truncated away)
    end: int  # just after the last byte written
    limit: int  # the base's bytes stop here (a truncation may have lowered it)

    def last_end(self, base_length: int, size: int) -> int:
        """Where a base chunk taken may end at the latest, for an edited content of ``size`` bytes.

        At ``limit`` only where both contents end there; elsewhere the byte
        after it (which that chunk's cut read) differs.
        """
        bound = min(self.limit, size)
        return bound if bound == base_length == size else bound - 1


def runs_from(catalog: Catalog, base: bytes, offset: int) -> Iterator[Extent]:
    """The base's runs from the one holding byte ``offset``, a window per read transaction (none held meanwhile)."""
    while True:
        with catalog.read() as tx:
            window = list(itertools.islice(tx.extents(base, offset), WINDOW))
        if not window:
            return
        yield from window
        offset = window[-1].end


def take_prefix(catalog: Catalog, gatherer: Gatherer, base: bytes, unchanged: int) -> int:
    """Feed the base's chunks that end before the one holding byte ``unchanged - 1``; where the cutting starts."""
    if unchanged <= 0:
        return 0
    last = unchanged - 1  # the first byte whose chunk is cut again
    offset = 0
    for run in runs_from(catalog, base, 0):
        if run.end <= last:
            gatherer.add_known(run)
            offset = run.end
            continue
        whole = (last - run.start) // run.length  # copies of the run's chunk that end before ``last``
        if whole:
            gatherer.add_known(Extent(run.start + whole * run.length, run.chunk, run.length, whole))
        return run.start + whole * run.length
    return offset


def chunk_ends(catalog: Catalog, base: bytes, after: int, limit: int) -> Iterator[int]:
    """Where the base's chunks end, from ``after`` up to ``limit``."""
    for run in runs_from(catalog, base, after):
        first = max(1, -(-(after - run.start) // run.length))  # the first copy that ends at or past ``after``
        for copy in range(first, run.count + 1):
            end = run.start + copy * run.length
            if end > limit:
                return
            yield end


def take_runs(catalog: Catalog, gatherer: Gatherer, base: bytes, offset: int, limit: int) -> int:
    """Feed the base's chunks from ``offset`` (where one starts) that end by ``limit``; where that stops."""
    for run in runs_from(catalog, base, offset):
        if offset >= limit:
            break
        copies = (min(run.end, limit) - offset) // run.length
        if copies > 0:
            gatherer.add_known(Extent(offset + copies * run.length, run.chunk, run.length, copies))
            offset += copies * run.length
        if offset < run.end:
            break
    return offset
