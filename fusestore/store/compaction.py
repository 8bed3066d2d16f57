"""Compaction: the space of deleted data comes back.

A pack is only ever appended to, then sealed; a chunk whose last use goes
(``Chunks.release``) leaves its stored bytes in the pack as dead bytes, and
only a pack left with nothing live is freed whole. A pack that keeps one
live chunk keeps all its dead bytes. Compaction copies the live chunks of
such packs elsewhere, so that they can go.

Which packs (``candidates``), from the catalog's ``packs`` rows:

- a sealed pack whose live bytes are less than half its size (``2 * live <
  size``; the size counts dead bytes too). Copying a pack costs its live
  bytes and gives back its dead ones: at half, each byte copied buys one
  back; a lower threshold would copy more per byte given back (at 10%
  dead, nine for one), a higher one would leave more waste. So once
  compaction has run, no sealed pack takes more than twice its live bytes;
- a sealed pack with nothing live (``live == 0``): the release path frees
  those as their last chunk goes, but one may be left otherwise (a pack
  whose chunks were all moved to replace lost bytes, or a count gone wrong);
- small sealed packs, once there are ``SMALL_PACKS`` of them: every open of
  a store that writes starts a pack and its close seals it, so a store
  opened and closed often gathers one small pack per open. Merged into the
  open pack, they become one. Waiting for ``SMALL_PACKS`` of them bounds
  both their number and how often the same bytes are copied again (a
  merged pack still small is merged again only with ``SMALL_PACKS - 1``
  newer ones).

The emptiest go first: the most space back per byte copied. The open pack
is never a candidate. A pack a budget stopped half way keeps its row and
the chunks not yet moved; emptier, it comes no later the next time.

How, in rounds of at most ``ROUND_BYTES`` copied (and a caller's
``budget`` in all), in this order of writes:

1. each live chunk's stored bytes are read at their place and appended as
   they are (no decode: the codec stays) to the open pack
   (``Chunks.append_stored``), which rolls over as writes make it; a round
   ends before the open pack would roll, so that what it copied there is
   recorded while that pack is still open (a sealed pack is freed once
   its recorded live bytes reach zero, and copies not yet recorded would
   go with it);
2. ``packs.barrier()``: the copies are durable;
3. one write transaction moves each chunk still at its old place
   (``tx.move_chunk``), takes its stored bytes off the old pack's ``live``
   and adds them to the new one's, and lists the new pack ``unsynced`` as
   every transaction that records chunks in a pack does. A chunk released
   (or moved) since it was read is skipped: its copy is dead bytes. So is
   a chunk whose new pack went meanwhile (sealed by a rollover, then freed as
   its last recorded chunk went): it stays where it was. Each sealed pack of the
   round with no chunk left in it (by the ``packchunks`` index) is freed
   (``Chunks.free_pack``) in the same transaction;
4. once that transaction is durable, the freed packs' files are deleted
   (``Content`` does it, as for every freed pack); ``Compaction.run``
   anchors the catalog before it returns, so the space is back by then.

A crash or a power loss at any point loses nothing:

- before the move transaction (during the copy, before or after the
  barrier): the catalog is unchanged and names only the old places; the
  copies are dead bytes at the end of the open pack, which the next open
  seals (freeing it if nothing live is in it);
- after the move transaction: the copies were durable before it, so the
  catalog, on disk or as a power loss takes it back, names bytes that are
  there. The old pack's row is gone and its key listed in ``freed``: its
  file (if the deletion had not run) is deleted at the next open, as a pack
  the catalog does not know (``Chunks.settle``) and as a freed one;
- a power loss that takes the catalog back to before the move finds the
  old pack still there: its deletion waited for an anchor after the move.

So the pack files left are the ones the catalog knows, and fsck has
nothing to account for. Writers and readers go on meanwhile: a writer takes
references to chunk rows wherever they are; a reader that looked a chunk up
before its move gets ``PackMissing`` once the old pack is deleted and looks
it up again (``ChunkReader``). A mount copies at most ``COMPACT_BYTES``
after each checkpoint, on a worker thread (``fs.daemon``); ``fusestore
compact``, and ``fsck --repair`` after a repair, compact every candidate.
A pack that cannot be read (missing, or shorter than its chunks) is left
as it is, with what was not copied yet, for fsck; it is said once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..catalog import Catalog, Chunk, Pack, u64
from ..pool import PackMissing, ShortRead
from .chunks import PACK_TARGET, Chunks

SMALL_PACK = PACK_TARGET // 8  # a sealed pack under this size is small
SMALL_PACKS = 8  # small sealed packs are merged once there are this many
ROUND_BYTES = 64 << 20  # stored bytes copied per barrier and move transaction, at most

log = logging.getLogger(__name__)


@dataclass
class Compacted:
    """What a compaction did: the packs it freed and their bytes, and the stored bytes it copied."""

    packs_freed: int = 0
    freed_bytes: int = 0  # the sizes of the packs freed
    copied_bytes: int = 0  # written to the open pack (copies of chunks released meanwhile included)

    @property
    def given_back(self) -> int:
        """The disk space compaction gave back (below zero when a budget stopped it before a pack was freed)."""
        return self.freed_bytes - self.copied_bytes


@dataclass
class _Round:
    """Copies made since the last barrier, and the packs whose chunks they came from."""

    copies: list[tuple[Chunk, Chunk]] = field(default_factory=list)  # (chunk at its old place, at its new one)
    packs: set[int] = field(default_factory=set)
    copied: int = 0


def candidates(packs: Iterable[Pack]) -> list[Pack]:
    """The packs to compact, in order: the sparse and empty ones, emptiest first, then small ones (docstring)."""
    sealed = [pack for pack in packs if pack.sealed]
    sparse = [pack for pack in sealed if pack.live <= 0 or 2 * pack.live < pack.size]
    chosen = {pack.pack for pack in sparse}
    small = [pack for pack in sealed if pack.pack not in chosen and pack.size < SMALL_PACK]
    sparse.sort(key=lambda pack: (pack.live / pack.size if pack.size > 0 else 0.0, pack.pack))
    return sparse + (small if len(small) >= SMALL_PACKS else [])


class Compaction:
    """The compaction of one store's packs (one at a time: a second caller waits for the first)."""

    def __init__(self, catalog: Catalog, chunks: Chunks) -> None:
        self.catalog = catalog
        self.chunks = chunks
        self._lock = threading.Lock()
        self._unreadable: set[int] = set()  # packs a read failed in: left to fsck, and said once

    def run(self, budget: int | None = None) -> Compacted:
        """Compact the candidates, copying at most ``budget`` stored bytes (None: all of them)."""
        with self._lock:
            with self.catalog.read() as tx:
                chosen = candidates(pack for pack in tx.packs() if not self.chunks.held(pack.pack))
            done = Compacted()
            current = _Round()
            for pack in chosen:
                if pack.pack in self._unreadable:
                    continue
                current.packs.add(pack.pack)
                for chunk in self._located(pack.pack):
                    spent = done.copied_bytes + current.copied
                    if budget is not None and spent > 0 and spent + chunk.stored > budget:
                        return self._end(current, done)
                    try:
                        stored = self.chunks.packs.read(chunk.pack, chunk.offset, chunk.stored)
                    except (PackMissing, ShortRead) as exc:
                        log.error("compaction: pack %016x cannot be read (%s): it is left as it is, with what "
                                  "was not copied yet (fusestore fsck)", pack.pack, exc)
                        self._unreadable.add(pack.pack)
                        break
                    current = self._copy(chunk, stored, current, done)
            return self._end(current, done)

    def _copy(self, chunk: Chunk, stored: bytes, current: _Round, done: Compacted) -> _Round:
        """Step 1 of the module docstring for one chunk; the round it is in (a new one when it ended one)."""
        copy = self.chunks.append_stored(chunk, stored, roll=not current.copies)
        if copy is None:  # the open pack is full: what this round copied there is recorded first
            self._finish(current, done)
            current = _Round(packs={chunk.pack})
            copy = self.chunks.append_stored(chunk, stored)
            assert copy is not None
        current.copies.append((chunk, copy))
        current.copied += copy.stored
        if current.copied >= ROUND_BYTES:
            self._finish(current, done)
            current = _Round(packs={chunk.pack})
        return current

    def _end(self, current: _Round, done: Compacted) -> Compacted:
        self._finish(current, done)
        if done.packs_freed:
            self.catalog.flush_commits()  # the freed packs' deletions run before this returns
        return done

    def _located(self, pack: int) -> list[Chunk]:
        """The chunk rows located in ``pack``, in offset order."""
        with self.catalog.read() as tx:
            rows = [tx.chunk(digest) for digest in tx.chunks_in_pack(pack)]
        return [chunk for chunk in rows if chunk is not None and chunk.pack == pack]

    def _finish(self, current: _Round, done: Compacted) -> None:
        """Steps 2 and 3 of the module docstring for one round; its figures are added to ``done``."""
        if not current.packs:
            return
        if current.copies:
            self.chunks.packs.barrier()
        freed, freed_bytes = 0, 0
        with self.catalog.write() as tx:
            changed: dict[int, Pack] = {}
            targets: set[int] = set()
            for old, new in current.copies:
                chunk = tx.chunk(old.digest)
                target = Chunks.pack_of(tx, new.pack, changed)
                if chunk is None or (chunk.pack, chunk.offset) != (old.pack, old.offset) or target is None:
                    continue
                source = Chunks.pack_of(tx, old.pack, changed)
                if source is not None:
                    source.live -= chunk.stored
                tx.move_chunk(chunk, new.pack, new.offset, new.stored, new.codec)
                target.live += new.stored
                targets.add(new.pack)
            for pack in changed.values():
                tx.save_pack(pack)
            if not self.chunks.packs.promises.durable_on_put:
                for pack_id in targets:
                    tx.add_unsynced(u64(pack_id), self.chunks.covering())
            for pack_id in sorted(current.packs):
                emptied = tx.pack(pack_id)
                if (emptied is not None and emptied.sealed and next(tx.chunks_in_pack(pack_id), None) is None
                        and self.chunks.free_pack(tx, pack_id)):
                    freed, freed_bytes = freed + 1, freed_bytes + emptied.size
        done.packs_freed += freed
        done.freed_bytes += freed_bytes
        done.copied_bytes += current.copied

