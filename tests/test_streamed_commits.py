"""Commits of files stored as they were written (``ChunkStream``), and staging files that become packs.

In-process on real stores, with ``FailingPackStore`` cues for faults and
real child processes (ending with ``os._exit``) for crashes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import blake3
import pytest

from fusestore import Store
from fusestore.pool import FailingPackStore, LocalPackStore
from fusestore.store.chunks import ADOPT_MIN
from fusestore.store.fsck import find_problems
from fusestore.store.owners import Owner

from .chunk_accounting import accounting_problems
from .helpers import env_of, leftover_staging, read

OWNER = Owner(1000, 1000)
PIECE = 1 << 20
LARGE = ADOPT_MIN + 3 * PIECE + 12345  # adopted when fresh


def fresh(size: int, seed: bytes) -> bytes:
    """Incompressible bytes no other test writes (BLAKE3's output stream)."""
    return blake3.blake3(seed).digest(length=size)


def write_streamed(store: Store, name: bytes, data: bytes) -> None:
    """Create ``name`` in ENV and write ``data`` in order as the mount does: a stream fed alongside, then commit."""
    _, staged = store.namespace.create(env_of(store), name, 0o644, OWNER)
    stream = store.writes.stream()
    try:
        for offset in range(0, len(data), PIECE):
            staged.write(data[offset:offset + PIECE], offset)
            stream.feed(data[offset:offset + PIECE])
        stream.finish()
        store.writes.commit(staged, blake3.blake3(data).digest(), len(data), streamed=stream)
    finally:
        stream.close()


def packs_of(store: Store) -> dict[int, tuple[int, int, bool]]:
    """pack -> (size, live, sealed)."""
    with store.catalog.read() as tx:
        return {pack.pack: (pack.size, pack.live, pack.sealed) for pack in tx.packs()}


def settled(store: Store) -> None:
    """After a checkpoint: the bookkeeping adds up and fsck finds nothing."""
    store.sync()
    assert accounting_problems(store, settled=False) == []
    assert find_problems(store) == []


def test_a_large_fresh_file_written_in_order_becomes_a_pack_of_its_own(store: Store) -> None:
    data = fresh(LARGE, b"adopted")
    write_streamed(store, b"f", data)
    assert read(store, "f") == data
    adopted = [pack for pack, (size, live, sealed) in packs_of(store).items() if size == len(data)]
    assert len(adopted) == 1, packs_of(store)
    size, live, sealed = packs_of(store)[adopted[0]]
    assert sealed and live == len(data), "every byte of it is a live raw chunk"
    assert os.path.getsize(store.path / "packs" / f"{adopted[0]:016x}") == len(data)
    assert leftover_staging(store) == []
    settled(store)


def test_a_large_file_of_chunks_the_store_holds_is_not_adopted_and_stores_nothing(store: Store) -> None:
    data = fresh(LARGE, b"twice")
    write_streamed(store, b"first", data)
    before = packs_of(store)
    write_streamed(store, b"second", data[:-1] + b"!")  # a new content whose chunks but the last are known
    after = packs_of(store)
    assert set(after) - set(before) <= {max(after)}, "at most the open pack the last chunk went to"
    grown = sum(live for _, live, _ in after.values()) - sum(live for _, live, _ in before.values())
    assert 0 < grown <= 64 << 10, "only the last chunk is new"
    assert read(store, "second") == data[:-1] + b"!"
    settled(store)


def test_a_small_fresh_file_has_its_chunks_appended_to_the_open_pack(store: Store) -> None:
    data = fresh(ADOPT_MIN // 2, b"small")
    write_streamed(store, b"f", data)
    assert not [pack for pack, (size, _, _) in packs_of(store).items() if size == len(data)]
    assert read(store, "f") == data
    settled(store)


def test_compressible_chunks_are_compressed_and_the_file_is_not_adopted(store: Store) -> None:
    data = b"".join(b"line %d of a text that compresses well\n" % n for n in range(LARGE // 40))
    write_streamed(store, b"f", data)
    assert sum(live for _, live, _ in packs_of(store).values()) < len(data) // 4
    assert read(store, "f") == data
    settled(store)


def test_a_staging_file_that_cannot_become_a_pack_has_its_chunks_appended(store_path: Path) -> None:
    packs = FailingPackStore(LocalPackStore(store_path / "packs"))
    with Store.open(store_path, packs=packs) as store:
        packs.on("adopt", OSError(errno.EXDEV, "another filesystem"))
        data = fresh(LARGE, b"refused")
        write_streamed(store, b"f", data)
        assert packs.calls["adopt"] == 1
        assert not [pack for pack, (size, _, _) in packs_of(store).items() if size == len(data)]
        assert read(store, "f") == data
        settled(store)


def crash_in_a_streamed_commit(store_path: Path, data: bytes, steps: str) -> None:
    """In a child process: write f as the mount does, with ``steps`` patched in first; it must die in them."""
    script = textwrap.dedent("""
        import os, sys
        from fusestore import Store
        from tests.test_streamed_commits import write_streamed
    """) + textwrap.dedent(steps) + textwrap.dedent("""
        store = Store.open(sys.argv[1])
        write_streamed(store, b"f", open(sys.argv[2], "rb").read())
        sys.exit("the commit did not crash")
    """)
    source = store_path.parent / "source"
    source.write_bytes(data)
    done = subprocess.run([sys.executable, "-c", script, str(store_path), str(source)], timeout=120,
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr


@pytest.mark.parametrize("where", ["adopted", "recorded"])
def test_a_crash_after_the_staging_file_became_a_pack_loses_nothing(store_path: Path, where: str) -> None:
    """Killed once the pack exists (its chunks not yet recorded, or all but the last batch's recorded on the
    pending content): recovery commits the staging file, which it reads and never writes, and the pack goes."""
    data = fresh(LARGE, b"crash " + where.encode())
    if where == "adopted":
        steps = """
            from fusestore.pool import LocalPackStore
            adopt = LocalPackStore.adopt
            LocalPackStore.adopt = lambda self, pack, source: (adopt(self, pack, source), os._exit(3))
        """
    else:
        steps = """
            from fusestore.store import gathering
            from fusestore.store.writes import Writes
            gathering.BATCH_BYTES = 4 << 20  # the batches before the last are recorded on their own
            Writes._commit_in = lambda *args, **kwargs: os._exit(3)  # in the last batch's transaction
        """
    crash_in_a_streamed_commit(store_path, data, steps)
    with Store.open(store_path) as store:
        assert read(store, "f") == data
        assert leftover_staging(store) == []
        settled(store)
        assert len(list((store.path / "packs").iterdir())) == len(packs_of(store))
