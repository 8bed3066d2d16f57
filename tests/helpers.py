"""Helpers the tests share: environments, a clock that moves by hand, puts and reads by path, a restart."""

from __future__ import annotations

import io
from pathlib import Path

from fusestore import Store
from fusestore.catalog.anchor import AnchorFile

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


def put(store: Store, path: str, data: bytes, env: str = ENV) -> str:
    return store.put_for_environment(env, path, io.BytesIO(data), len(data))


def read(store: Store, path: str, env: str = ENV) -> bytes:
    reader, length = store.get_for_environment(env, path)
    with reader:
        data = reader.read()
    assert len(data) == length
    return data


def stored_contents(store: Store) -> list[bytes]:
    """The digests of the contents whose chunks the store holds, sorted (a content of no bytes has none)."""
    with store.catalog.read() as tx:
        return sorted({digest for digest, _ in tx.all_extents()})


def live_chunk_bytes(store: Store) -> int:
    """The stored bytes of every chunk the catalog holds: what a deletion gives back once packs are compacted."""
    with store.catalog.read() as tx:
        return sum(chunk.stored for chunk in tx.chunks())


def leftover_staging(store: Store) -> list[str]:
    """Staging files that are neither in use nor waiting for a checkpoint to retire them: leaks."""
    return sorted(set(store.staging.names()) - set(store.writes.retired()))


def restart_machine(catalog: Path) -> None:
    """What a restart of the machine changes for a store: its last anchor now comes from another boot."""
    anchors = AnchorFile(catalog / "anchor")
    try:
        last = anchors.last()
        assert last is not None, "a store that was opened has an anchor"
        anchors.write(last.txnid, last.metas, bytes(16), closed=last.closed)
    finally:
        anchors.close()
