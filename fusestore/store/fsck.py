"""Consistency checks of a store: the invariants DESIGN.md promises.

Today this reports problems (tests run it after every step); the
``fusestore fsck --repair`` command will build on the same checks.
"""

from __future__ import annotations

import stat
from collections import Counter

from ..digests import EMPTY_DIGEST
from .store import Store


def find_problems(store: Store) -> list[str]:
    """Every broken invariant, as a readable line; an empty list means consistent.

    - each resource's refcount equals the inodes that reference it plus the
      uploads that reserved it;
    - every complete non-empty resource has its blob, and the pool holds no
      other blob;
    - every directory entry points at an existing inode;
    - every blob listed as not yet synced belongs to a complete resource.
    """
    problems = []
    with store.catalog.read() as tx:
        references: Counter[bytes] = Counter()
        inodes = set()
        for node in tx.inodes():
            inodes.add(node.ino)
            if stat.S_ISREG(node.mode) and node.content is not None:
                references[node.content] += 1
        for record in tx.staging_records():
            if record.reserved and record.expected is not None:
                references[record.expected] += 1
        resources = {res.digest: res for res in tx.resources()}
        unsynced = tx.unsynced()
        with tx.raw.cursor(db=tx.catalog.dirents) as cur:
            for key, value in cur:
                if int.from_bytes(value, "big") not in inodes:
                    missing = int.from_bytes(value, "big")
                    problems.append(f"entry {bytes(key[8:])!r} points at missing inode {missing}")
    for digest, res in resources.items():
        if res.refcount != references[digest]:
            problems.append(
                f"resource {digest.hex()} has refcount {res.refcount}, referenced {references[digest]} times"
            )
    for digest in references:
        if digest not in resources:
            problems.append(f"content {digest.hex()} is referenced but has no resource")
    for digest in unsynced:
        if digest not in resources or not resources[digest].complete:
            problems.append(f"blob {digest.hex()} is listed as unsynced but no complete resource names it")
    wanted = {d for d, res in resources.items() if res.complete and d != EMPTY_DIGEST}
    present = set(store.blobs.digests())
    for digest in wanted - present:
        problems.append(f"blob {digest.hex()} is missing from the pool")
    for digest in present - wanted:
        problems.append(f"blob {digest.hex()} is in the pool but not referenced")
    return problems
