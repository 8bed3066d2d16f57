"""The in-place upgrade of a store made before chunks: each whole-file blob chunked into packs, losing nothing.

A store of format 1 or 2 holds each content as one whole-file blob,
``<store>/pool/ab/cd/<hex>``, its resource of layout ``LAYOUT_WHOLE_BLOB``.
The catalog's own changes are made by ``Catalog`` (the chunk tables
created, ``meta/format`` set to 3) when the store is first opened for
writing; from then on the store reads such blobs as before and writes only
chunks. What is left is to move the blobs' bytes into packs, which
``Store``'s open does here, after recovery and before anything is served
(the first mount, or ``fusestore fsck --repair``). A store without ``pool/``
holds no whole-file blob: formats 1 and 2 made it at every open, and the
upgrade removes it last, so that the next open makes ``NoBlobs``.

The naive way, a transaction that replaces every blob by chunks at once,
would hold the whole store in one transaction and lose everything done so
far to a crash; deleting a blob as soon as its chunks are recorded would
lose it to a power loss that takes the pack bytes but not the catalog.
Instead each resource is converted on its own, and its blob stays its
bytes until its chunks are durable:

1. Chunk, under the digest's stripe lock (``Content.stripe``, which the
   deleter of a freed blob takes too). The blob is read once, front to
   back, and hashed as it is read, while ``Chunks.store`` cuts it into
   chunks and records them in batches, adding the extents to the resource,
   which stays complete and whole-blob meanwhile: readers keep reading the
   blob, and a crash leaves a complete whole-blob resource with extents.
2. A blob that is missing, of another length than its resource, unreadable
   or not hashing to its digest is never stored as chunks: it is moved to
   ``lost+found/`` as ``fsck --repair`` moves a damaged blob, then one
   transaction releases the extents its batches added (``Chunks.release``)
   and marks the resource *lost* (layout chunks, no extents), and an error
   in the log names the files, which read EIO until the same bytes are
   written again. Moved first, so that a crash in between leaves a missing
   blob, which the next open marks lost.
3. Every ``GROUP_BYTES`` (or ``GROUP_CONTENTS`` contents), one barrier of the
   pack store makes the chunks of the group durable; then, for each content
   of the group, under its stripe lock, ONE transaction switches the
   resource to ``LAYOUT_CHUNKS`` and frees its blob (``Content.drop_bytes``:
   the 32-byte digest listed in ``freed``), which ``Content`` deletes once
   that transaction is durable (no ``unsynced`` entry names the blob:
   recovery emptied the list). The callbacks of the upgrade's transactions
   run after the stripe lock is let go: on a nearly full disk a deletion
   runs at once, and takes it.
4. Resources with no blob switch their layout in one transaction: pending
   ones (recovery has dropped those no upload holds) and lost ones (which
   keep no extents). The empty content keeps layout 0, as in a store made
   with chunks: it has neither blob nor extents.
5. Once all are switched, a checkpoint runs the deletions and makes them
   durable (its barrier follows them). Files the pool still holds are
   debris no content names (blobs a crash left; fsck reports them as
   stray): those named as blobs are moved to ``lost+found/``, nothing is
   deleted that was not freed, then the empty fan-out directories and
   ``pool/`` are removed. An empty ``pool/`` that a power loss brings back
   is removed by the next open. Anything else in the pool keeps it there,
   with a warning, and the next open tries again.

A crash at any point is resumed by the next open: recovery deletes the
blobs freed by switches that committed (their ``freed`` entries), and a
complete whole-blob resource found with extents is a conversion cut
short: its extents are released and it is converted again. After a power
loss the catalog goes back to its last anchor, which never names a switch
whose chunks are not durable (the barrier of step 3 came first), and a
blob is deleted only once an anchor covers its switch. An error the
upgrade cannot get past (a full disk for the packs) fails the open, as an
error of recovery does; the next open resumes.

Progress goes to the log at INFO: a line at the start, one every
``PROGRESS_EVERY`` seconds (contents converted, bytes read), one at the
end; a DEBUG line per switched content.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3

from ..catalog import LAYOUT_CHUNKS, LAYOUT_WHOLE_BLOB, LOST, Resource, Txn
from ..digests import EMPTY_DIGEST
from ..pool import BlobMissing
from .inspect import Inspection
from .repair import to_lost_and_found

if TYPE_CHECKING:
    from .store import Store

GROUP_BYTES = 256 << 20  # bytes of contents chunked between two barriers of the packs
GROUP_CONTENTS = 4096  # likewise, contents (a barrier per small file would cost a syncfs each)
PROGRESS_EVERY = 10.0  # seconds between two progress lines

log = logging.getLogger(__name__)


def upgrade(store: Store) -> bool:
    """Chunk every whole-file blob of ``store`` into packs (see the module docstring); whether ``pool/`` is gone."""
    return _Upgrade(store).run()


def pending(ins: Inspection) -> str | None:
    """What the upgrade would do to the store ``ins`` looks at, or None when it holds no whole-file blob."""
    blobs = [res for res in ins.resources() if _has_blob(res)]
    if not blobs:
        return None
    return (f"the store holds {len(blobs)} whole-file blobs ({sum(res.length for res in blobs)} bytes) of a store "
            "made before chunks: a mount or fsck --repair chunks them into packs")


def _has_blob(resource: Resource) -> bool:
    return resource.layout == LAYOUT_WHOLE_BLOB and resource.complete and resource.digest != EMPTY_DIGEST


@dataclass
class _Figures:
    contents: int = 0  # of the whole-blob resources found at the start
    converted: int = 0  # switched to chunks
    converted_bytes: int = 0
    lost: int = 0
    read: int = 0  # bytes read from blobs (and chunked)


class _Upgrade:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.catalog = store.catalog
        self.content = store.content
        self.chunks = store.chunks
        self.figures = _Figures()
        self._shown = time.monotonic()

    def run(self) -> bool:
        with self.catalog.read() as tx:
            old = [res for res in tx.resources() if res.layout == LAYOUT_WHOLE_BLOB and res.digest != EMPTY_DIGEST]
        figures = self.figures
        figures.contents = len(old)
        if old:
            log.info("upgrade: chunking the whole-file blobs of %d contents (%d bytes) into packs: this store was "
                     "made before chunks", len(old), sum(res.length for res in old if res.complete))
        group: list[Resource] = []
        group_bytes = 0
        for resource in old:
            if self._chunk(resource.digest):
                group.append(resource)
                group_bytes += resource.length
            if group_bytes >= GROUP_BYTES or len(group) >= GROUP_CONTENTS:
                self._switch(group)
                group, group_bytes = [], 0
        self._switch(group)
        self.store.checkpoints.checkpoint()  # the freed blobs deleted, and their deletion durable
        gone = self._remove_pool()
        if old:
            log.info("upgrade: done: %d contents (%d bytes) now in chunks, %d lost%s; %s", figures.converted,
                     figures.converted_bytes, figures.lost, " (see the errors above)" if figures.lost else "",
                     "pool/ removed" if gone else "pool/ stays (see the warnings above)")
        return gone

    # -- one content ------------------------------------------------------------------------

    def _chunk(self, digest: bytes) -> bool:
        """Store the chunks of one content (steps 1, 2 and 4); whether it is ready to switch."""
        later: list[Callable[[], None]] = []  # its transactions' callbacks, run once the stripe is let go
        with self.content.stripe(digest):
            with self.catalog.write(defer_callbacks=True) as tx:
                resource = tx.resource(digest)
                assert resource is not None, f"the resource {digest.hex()} went during the upgrade"
                if next(tx.extents(digest), None) is not None:
                    self.chunks.release(tx, digest)  # may free packs: deleted by the callbacks
                    log.info("upgrade: a crash cut short the conversion of %s: converting it again", digest.hex())
                if not resource.complete:
                    resource.layout = LAYOUT_CHUNKS
                    tx.save_resource(resource)
            later += tx.callbacks
            damage = self._store(resource) if resource.complete else None
            if damage is not None:
                later += self._lose(resource, damage)
        Txn.run_callbacks(later)
        return resource.complete and damage is None

    def _store(self, resource: Resource) -> str | None:
        """Chunk the blob of a complete resource, checking it as it is read; what is wrong with it, if anything."""
        digest, length = resource.digest, resource.length
        try:
            reader = self.content.blobs.open(digest)
        except BlobMissing:
            return "is missing"
        hasher = blake3.blake3()
        failed: list[OSError] = []

        def read(want: int, offset: int) -> bytes:  # the chunker reads each byte once, front to back
            try:
                data = reader.pread(want, offset)
            except OSError as exc:  # a short read ends the chunking, and the hash tells
                failed.append(exc)
                return b""
            hasher.update(data)
            self.figures.read += len(data)
            self._progress()
            return data

        try:
            if reader.size != length:
                return f"has {reader.size} bytes, not {length}"
            self.chunks.store(digest, length, read)
        finally:
            reader.close()
        if failed:
            return f"could not be read ({failed[0]})"
        if hasher.digest() != digest:
            return "does not hash to its name"
        return None

    def _lose(self, resource: Resource, damage: str) -> list[Callable[[], None]]:
        """Step 2, under the stripe lock: the blob aside, then its extents released and its content lost.

        Gives the transaction's callbacks, for after the stripe lock.
        """
        digest = resource.digest
        moved = to_lost_and_found(self.store, digest)
        with self.catalog.write(defer_callbacks=True) as tx:
            self.chunks.release(tx, digest)
            resource.state, resource.layout = LOST, LAYOUT_CHUNKS
            tx.save_resource(resource)
        with Inspection.over(self.catalog, self.store.path) as ins:
            users = ", ".join(ins.paths_using(digest)) or "no file"
        log.error("upgrade: the whole-file blob %s %s%s: its content is marked lost, and these read EIO until the "
                  "same bytes are written again: %s", digest.hex(), damage,
                  f" (moved to {moved})" if moved is not None else "", users)
        self.figures.lost += 1
        return tx.callbacks

    def _switch(self, group: list[Resource]) -> None:
        """Step 3: the group's chunks durable, then each resource switched to them and its blob freed."""
        if not group:
            return
        self.chunks.packs.barrier()
        for resource in group:
            with self.content.stripe(resource.digest):
                with self.catalog.write(defer_callbacks=True) as tx:
                    switched = tx.resource(resource.digest)
                    assert switched is not None, f"the resource {resource.digest.hex()} went during the upgrade"
                    self.content.drop_bytes(tx, switched)  # its whole-file blob: freed
                    switched.layout = LAYOUT_CHUNKS
                    tx.save_resource(switched)
                log.debug("upgrade: %s (%d bytes) is in chunks now", resource.digest.hex(), resource.length)
            tx.run_callbacks(tx.callbacks)
            self.figures.converted += 1
            self.figures.converted_bytes += resource.length
            self._progress()

    # -- the end -----------------------------------------------------------------------------

    def _remove_pool(self) -> bool:
        """Step 5: the debris aside, then the empty pool removed; whether it is gone."""
        pool = self.store.path / "pool"
        if self.content.deleting():  # a deletion failed: the next open's recovery does it
            return False
        with Inspection.over(self.catalog, self.store.path) as ins:
            stray, debris = ins.blobs(), ins.pool_debris()
        for path in debris:
            log.warning("upgrade: %s is in the pool but is not a blob: the pool stays until it is moved away", path)
        if debris:
            return False
        for blob in stray:
            moved = to_lost_and_found(self.store, blob.digest)
            log.warning("upgrade: moved %s, a blob no content names, to %s", blob.path, moved)
        for directory, _, _ in os.walk(pool, topdown=False):  # the fan-out directories, then pool/ itself
            os.rmdir(directory)
        return True

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._shown >= PROGRESS_EVERY:
            self._shown = now
            figures = self.figures
            log.info("upgrade: %d of %d contents in chunks, %d bytes read from their blobs", figures.converted,
                     figures.contents, figures.read)
