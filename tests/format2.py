"""A genuine format-2 store (whole-file blobs in ``pool/``, no chunks), made without the code that wrote format 2.

``make_format2(path, fill)`` creates a store with today's code, lets
``fill`` put files in it, closes it, and rewrites it as a fusestore of
format 2 would have left it closed (``docs/FORMAT.md`` as of format 2):

- each content's bytes become its blob, ``pool/ab/cd/<64 hex>`` (files
  0600, directories 0700), written with holes where the content has
  blocks of zeros, as a blob linked from a sparse staging file has; the
  empty content has none;
- each resource's layout becomes ``LAYOUT_WHOLE_BLOB`` (0): the 18-byte
  value of format 2, length, refcount and state unchanged;
- the ``chunks``, ``extents``, ``packs`` and ``packchunks`` databases are
  dropped, with the ``meta`` keys ``chunking``, ``next_pack`` and
  ``store_id``, and
  ``packs/`` is removed, leaving the ten databases of format 2;
- ``meta/format`` becomes ``2``, and the catalog is synced and anchored
  as a close of format 2 anchors it (the anchor's slots are the same in
  both formats).

``make_format1`` goes one version further back: no ``synced`` database,
no anchor, ``meta/format`` ``1`` (FORMAT.md's version log).

So the catalog holds, record for record, what format 2 would hold for the
same operations, and the pool what format 2's pool would. It differs only
where nothing reads it: LMDB's page history (the free pages of the dropped
databases, the transaction ids), and blobs that are files of their own
rather than hard links of retired staging files (whose link count is 1
either way once the staging file is gone).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import lmdb

from fusestore import Store, linux, private
from fusestore.catalog import LAYOUT_CHUNKS, LAYOUT_WHOLE_BLOB, Resource
from fusestore.catalog.anchor import AnchorFile
from fusestore.catalog.anchoring import meta_pages
from fusestore.digests import EMPTY_DIGEST
from fusestore.pool.local import blob_path

CHUNK_TABLES = (b"chunks", b"extents", b"packs", b"packchunks")
BLOCK = 64 << 10


def make_format2(path: Path, fill: Callable[[Store], None]) -> dict[bytes, bytes]:
    """A format-2 store at ``path`` holding what ``fill`` put; the bytes of each non-empty content, by digest."""
    contents: dict[bytes, bytes] = {}
    with Store.open(path) as store:
        fill(store)
        for resource in store.resources():
            if resource.complete and resource.digest != EMPTY_DIGEST:
                reader = store.content.open_content(resource.digest)
                try:
                    contents[resource.digest] = reader.pread(resource.length, 0)
                finally:
                    reader.close()
    for digest, data in contents.items():
        write_blob(path, digest, data)
    catalog = path / "catalog"
    env = lmdb.open(str(catalog), map_size=1 << 40, max_dbs=32, sync=False)
    try:
        with env.begin(write=True) as txn:
            for name in (b"unsynced", b"freed", b"staging", b"orphans"):
                assert txn.stat(env.open_db(name, txn=txn))["entries"] == 0, f"a closed store has no {name!r}"
            resources = env.open_db(b"resources", txn=txn)
            for key, raw in list(txn.cursor(db=resources)):
                resource = Resource.decode(bytes(key), raw)
                assert resource.layout == LAYOUT_CHUNKS or resource.digest == EMPTY_DIGEST  # whole-blob in both
                resource.layout = LAYOUT_WHOLE_BLOB
                txn.put(resource.digest, resource.encode(), db=resources)
            for name in CHUNK_TABLES:
                txn.drop(env.open_db(name, txn=txn), delete=True)
            meta = env.open_db(b"meta", txn=txn)
            txn.delete(b"chunking", db=meta)
            txn.delete(b"next_pack", db=meta)
            txn.delete(b"store_id", db=meta)
            txn.put(b"format", b"2", db=meta)
        env.sync(True)
        metas, txnid = meta_pages(env, catalog), int(env.info()["last_txnid"])
    finally:
        env.close()
    anchors = AnchorFile(catalog / "anchor")
    try:
        anchors.write(txnid, metas, linux.boot_id(), closed=True)
    finally:
        anchors.close()
    shutil.rmtree(path / "packs", ignore_errors=True)
    return contents


def make_format1(path: Path, fill: Callable[[Store], None]) -> dict[bytes, bytes]:
    """A format-1 store: a format-2 one without what version 2 added."""
    contents = make_format2(path, fill)
    env = lmdb.open(str(path / "catalog"), map_size=1 << 40, max_dbs=32)
    try:
        with env.begin(write=True) as txn:
            txn.drop(env.open_db(b"synced", txn=txn), delete=True)
            txn.put(b"format", b"1", db=env.open_db(b"meta", txn=txn))
        env.sync(True)
    finally:
        env.close()
    (path / "catalog" / "anchor").unlink()
    return contents


def write_blob(store: Path, digest: bytes, data: bytes) -> None:
    """The blob of ``digest`` in the store's pool, with holes where ``data`` has blocks of zeros."""
    target = Path(blob_path(store / "pool", digest))
    private.make_dirs(target.parent)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, private.FILE_MODE)
    try:
        for offset in range(0, len(data), BLOCK):
            block = data[offset:offset + BLOCK]
            if block.count(0) != len(block):
                os.pwrite(fd, block, offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
