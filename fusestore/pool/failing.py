"""A pack store that fails or stops on cue, around a real one: the seam for fault injection in tests.

``FailingPackStore(inner)`` forwards every call to ``inner``. ``on(op,
action)`` queues an action for the next call of ``op`` (one of
``OPERATIONS``): an exception to raise instead of the call, or a callable
run just before it (to interleave another operation, or to end the process
with ``os._exit`` mid-way), or with ``after=True`` just after it (an
exception then stands for an answer lost after the work was done: an
append whose bytes are written, but which its caller sees fail).
``always=True`` keeps the action for every later call. ``calls`` counts the
calls of each operation, failed ones included.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TypeVar

from .packs import PackStore
from .staging import StagingFile

Action = BaseException | Callable[[], object]
T = TypeVar("T")

OPERATIONS = ("create", "append", "end", "seal", "read", "adopt", "delete", "packs", "barrier")


class FailingPackStore:
    def __init__(self, inner: PackStore) -> None:
        self.inner = inner
        self.promises = inner.promises
        self._cues: dict[tuple[str, bool], list[tuple[Action, bool]]] = defaultdict(list)
        self.calls: dict[str, int] = defaultdict(int)

    def on(self, op: str, action: Action, *, after: bool = False, always: bool = False) -> None:
        if op not in OPERATIONS:
            raise ValueError(f"a pack store has no operation {op!r} to fail")
        self._cues[op, after].append((action, always))

    def clear(self) -> None:
        self._cues.clear()

    def _cue(self, op: str, *, after: bool) -> None:
        queue = self._cues.get((op, after))
        if not queue:
            return
        action, always = queue[0]
        if not always:
            queue.pop(0)
        if isinstance(action, BaseException):
            raise action
        action()

    def _call(self, op: str, call: Callable[[], T]) -> T:
        self.calls[op] += 1
        self._cue(op, after=False)
        result = call()
        self._cue(op, after=True)
        return result

    def create(self, pack: int) -> None:
        self._call("create", lambda: self.inner.create(pack))

    def append(self, pack: int, data: bytes | memoryview) -> int:
        return self._call("append", lambda: self.inner.append(pack, data))

    def end(self, pack: int) -> int:
        return self._call("end", lambda: self.inner.end(pack))

    def seal(self, pack: int) -> None:
        self._call("seal", lambda: self.inner.seal(pack))

    def read(self, pack: int, offset: int, length: int) -> bytes:
        return self._call("read", lambda: self.inner.read(pack, offset, length))

    def adopt(self, pack: int, source: StagingFile) -> None:
        self._call("adopt", lambda: self.inner.adopt(pack, source))

    def delete(self, pack: int) -> None:
        self._call("delete", lambda: self.inner.delete(pack))

    def packs(self) -> Iterator[int]:
        return self._call("packs", lambda: iter(list(self.inner.packs())))

    def barrier(self) -> None:
        self._call("barrier", lambda: self.inner.barrier())
