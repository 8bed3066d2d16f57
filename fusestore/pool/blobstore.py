"""The blob-store seam: what the store needs of wherever blobs live.

A blob is an immutable sequence of bytes named by the BLAKE3 digest of its
content. The store decides when a blob is stored or deleted (it keeps the
refcounts in the catalog); a blob store only keeps bytes under names. The
protocol is kept narrow so that a directory, packs of chunks and an object
store can each implement it:

- ``put`` stores a complete staging file under its digest (replacing a blob
  of that name is harmless: it holds the same bytes, or is debris nothing
  references);
- ``open`` gives a ``BlobReader`` (``pread``, ``hash``, ``copy_to`` and ``size``), ``BlobMissing``
  when there is no such blob;
- ``delete`` (of a missing blob: nothing), ``contains``, ``digests``;
- ``barrier`` makes every ``put`` so far durable, names included;
- ``promises`` says what the backend guarantees without a barrier.

Empty content has no blob: the store never asks a blob store for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from .staging import StagingFile

Progress = Callable[[int], object]


class BlobMissing(FileNotFoundError):
    """No blob of that digest (deleted, never stored, or lost in a crash)."""


@dataclass(frozen=True)
class Promises:
    """What a blob store guarantees.

    ``durable_on_put``: a put is durable once it returns (an object store);
    otherwise only after the next ``barrier`` (a local directory, which
    batches the disk's flushes). ``atomic_put``: a reader never sees part of
    a blob, even after a crash during the put.
    """

    durable_on_put: bool
    atomic_put: bool


class BlobReader(Protocol):
    """Random access to one blob's bytes."""

    @property
    def size(self) -> int: ...

    def pread(self, length: int, offset: int) -> bytes: ...

    def hash(self, on_read: Progress | None = None) -> tuple[bytes, int]:
        """BLAKE3 and size of the whole blob (``on_read(n)`` after each piece, as ``digests.hash_fd``)."""

    def copy_to(self, target: StagingFile, length: int, on_copied: Progress | None = None) -> None:
        """Copy the first ``length`` bytes into an empty staging file (an open file's starting content).

        Holes stay holes: a sparse file's copy costs no more disk than it.
        ``on_copied(n)`` after each piece; it may raise to stop the copy.
        """

    def close(self) -> None: ...


class BlobStore(Protocol):
    promises: Promises

    def put(self, staged: StagingFile, digest: bytes) -> None: ...

    def open(self, digest: bytes) -> BlobReader: ...

    def delete(self, digest: bytes) -> None: ...

    def contains(self, digest: bytes) -> bool: ...

    def digests(self) -> Iterator[bytes]: ...

    def barrier(self) -> None: ...


class NoBlobs:
    """The whole-file blob store of a store made with chunks: it holds nothing and never will."""

    promises = Promises(durable_on_put=True, atomic_put=True)

    def put(self, staged: StagingFile, digest: bytes) -> None:
        raise NotImplementedError("a store made with chunks stores no whole-file blobs")

    def open(self, digest: bytes) -> BlobReader:
        raise BlobMissing(f"no blob {digest.hex()}")

    def delete(self, digest: bytes) -> None:
        pass

    def contains(self, digest: bytes) -> bool:
        return False

    def digests(self) -> Iterator[bytes]:
        return iter(())

    def barrier(self) -> None:
        pass
