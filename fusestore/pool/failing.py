"""A blob store that fails or stops on cue, around a real one: the seam for fault injection in tests.

``FailingBlobStore(inner)`` forwards every call to ``inner``. ``on(op,
action)`` queues an action for the next call of ``op`` (``"put"``,
``"open"``, ``"delete"``, ``"contains"``, ``"barrier"``): an exception to
raise instead of the call, or a callable run just before it (to interleave
another operation, or to end the process with ``os._exit`` mid-way), or
with ``after=True`` just after it. ``always=True`` keeps the action for
every later call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator

from .blobstore import BlobReader, BlobStore
from .staging import StagingFile

Action = BaseException | Callable[[], object]


class FailingBlobStore:
    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.promises = inner.promises
        self._cues: dict[tuple[str, bool], list[tuple[Action, bool]]] = defaultdict(list)
        self.calls: dict[str, int] = defaultdict(int)

    def on(self, op: str, action: Action, *, after: bool = False, always: bool = False) -> None:
        if op not in OPERATIONS:
            raise ValueError(f"a blob store has no operation {op!r} to fail")
        self._cues[op, after].append((action, always))

    def clear(self) -> None:
        self._cues.clear()

    def _cue(self, op: str, *, after: bool) -> None:
        if not after:
            self.calls[op] += 1
        queue = self._cues.get((op, after))
        if not queue:
            return
        action, always = queue[0]
        if not always:
            queue.pop(0)
        if isinstance(action, BaseException):
            raise action
        action()

    def put(self, staged: StagingFile, digest: bytes) -> None:
        self._cue("put", after=False)
        self.inner.put(staged, digest)
        self._cue("put", after=True)

    def open(self, digest: bytes) -> BlobReader:
        self._cue("open", after=False)
        reader = self.inner.open(digest)
        self._cue("open", after=True)
        return reader

    def delete(self, digest: bytes) -> None:
        self._cue("delete", after=False)
        self.inner.delete(digest)
        self._cue("delete", after=True)

    def contains(self, digest: bytes) -> bool:
        self._cue("contains", after=False)
        found = self.inner.contains(digest)
        self._cue("contains", after=True)
        return found

    def digests(self) -> Iterator[bytes]:
        return self.inner.digests()

    def barrier(self) -> None:
        self._cue("barrier", after=False)
        self.inner.barrier()
        self._cue("barrier", after=True)


OPERATIONS = ("put", "open", "delete", "contains", "barrier")
