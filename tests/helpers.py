"""Helpers the tests share: environments, a clock that moves by hand, puts and reads by path, a restart."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import blake3

from fusestore import Store, errors
from fusestore.catalog import ROOT_INO
from fusestore.catalog.anchor import AnchorFile
from fusestore.pool.memory_staging import ENVIRONMENT as MEMORY_STAGING
from fusestore.store.owners import Owner

ENV = "0f8fad5b-d9cb-469f-a165-70867728950e"
ENV2 = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


class ManualClock:
    """A clock that only moves when a test says so (expiry without sleeping)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def env_of(store: Store) -> int:
    """The inode of ENV, made when missing."""
    try:
        return store.namespace.lookup(ROOT_INO, ENV.encode()).ino
    except errors.NotFound:
        return store.namespace.mkdir(ROOT_INO, ENV.encode(), 0o755, Owner(1000, 1000)).ino


def put(store: Store, path: str, data: bytes, env: str = ENV) -> str:
    return store.put_for_environment(env, path, io.BytesIO(data), len(data))


def read(store: Store, path: str, env: str = ENV) -> bytes:
    reader, length = store.get_for_environment(env, path)
    with reader:
        data = reader.read()
    assert len(data) == length
    return data


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run a block under another umask (what fusestore makes must not depend on it)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def stored_contents(store: Store) -> list[bytes]:
    """The digests of the contents whose chunks the store holds, sorted (a content of no bytes has none)."""
    with store.catalog.read() as tx:
        return sorted({digest for digest, _ in tx.all_extents()})


def live_chunk_bytes(store: Store) -> int:
    """The stored bytes of every chunk the catalog holds: what a deletion gives back once packs are compacted."""
    with store.catalog.read() as tx:
        return sum(chunk.stored for chunk in tx.chunks())


def chunk_place(store_path: Path, data: bytes, offset: int = 0, store: Store | None = None) -> tuple[Path, int, int]:
    """(pack file, offset in it, stored length) of the chunk that holds byte ``offset`` of the content ``data``.

    Reads the catalog of ``store`` when given, else of a store no process has open.
    """
    from fusestore.store.inspect import Inspection

    digest = blake3.blake3(data).digest()
    with (Inspection.over(store.catalog, store_path) if store else Inspection.open(store_path)) as ins:
        extent = next(extent for extent in ins.extents_of(digest) if extent.start <= offset < extent.end)
        chunk = ins.chunk(extent.chunk)
        assert chunk is not None, "an extent names a chunk the catalog holds"
    return store_path / "packs" / f"{chunk.pack:016x}", chunk.offset, chunk.stored


def flip_a_stored_byte(store_path: Path, data: bytes, offset: int = 0, store: Store | None = None) -> None:
    """Damage the stored bytes of the chunk holding byte ``offset`` of ``data``, behind the store's back."""
    pack, at, stored = chunk_place(store_path, data, offset, store)
    with open(pack, "r+b") as file:
        file.seek(at + stored // 2)
        byte = file.read(1)
        file.seek(at + stored // 2)
        file.write(bytes([byte[0] ^ 0xFF]))


def leftover_staging(store: Store) -> list[str]:
    """Staging files that are neither in use nor waiting for a checkpoint to retire them: leaks."""
    return sorted(set(store.staging.names()) - set(store.writes.retired()))


def restart_machine(catalog: Path) -> None:
    """What a restart of the machine changes for a store: its last anchor now comes from another boot.

    And memory is empty: every staging file in memory (``memory_staging``) is gone.
    """
    for directory, _, files in os.walk(os.environ[MEMORY_STAGING]):
        for name in files:
            os.unlink(os.path.join(directory, name))
    anchors = AnchorFile(catalog / "anchor")
    try:
        last = anchors.last()
        assert last is not None, "a store that was opened has an anchor"
        anchors.write(last.txnid, last.metas, bytes(16), closed=last.closed)
    finally:
        anchors.close()


def crash_before_commit(store_path: Path, data: bytes, steps: str = "") -> None:
    """In a child process: create f in ENV, write ``data`` to it, run ``steps``, and die without committing."""
    script = textwrap.dedent(f"""
        import os, sys
        from fusestore import Store
        from fusestore.catalog import ROOT_INO
        from fusestore.store.owners import Owner
        store = Store.open(sys.argv[1])
        env = store.namespace.mkdir(ROOT_INO, {ENV.encode()!r}, 0o755, Owner(0, 0)).ino
        attrs, staged = store.namespace.create(env, b"f", 0o644, Owner(0, 0))
        staged.write({data!r}, 0)
        ino = attrs.ino
    """) + textwrap.dedent(steps) + "\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", script, str(store_path)], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parent.parent)
