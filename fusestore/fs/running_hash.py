"""BLAKE3 of a file as it is written, off the event loop once the file grows large.

Hashing a large file inline costs the loop about as much time as the writes
themselves; on a worker thread (blake3 releases the GIL) it overlaps with
the next write requests instead. Small files stay inline: a thread per file
would cost more than their hashing. Updates keep their order: one thread
consumes one queue, and the queue is bounded so that memory stays flat when
hashing falls behind (the writer then waits for room). Writes go to the
thread in batches of ``BATCH`` bytes: waking it for every write cost the
loop more than the hashing it handed over (on two cores). The same thread
reports its progress every ``PROGRESS_STEP`` bytes, so that other work that
follows the bytes in order (starting their writeback to disk) stays off the
loop too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import blake3
import trio

BACKGROUND_AFTER = 8 << 20  # bytes hashed inline before a worker thread takes over
BATCH = 4 << 20  # bytes handed to the worker thread at once
QUEUE_BATCHES = 4  # at most this many batches wait for the hasher
PROGRESS_STEP = 32 << 20


class RunningHash:
    """The BLAKE3 of bytes fed in order; ``digest`` may block, so call it from a worker thread."""

    def __init__(self, on_progress: Callable[[int], None] | None = None) -> None:
        """``on_progress(n)``, if given, is called on the worker thread once ``n`` bytes are hashed."""
        self._on_progress = on_progress
        self._hasher = blake3.blake3()
        self._fed = 0
        self._queue: queue.Queue[list[bytes] | None] | None = None
        self._batch: list[bytes] = []  # handed to the thread together: one wake-up per batch, not per write
        self._batched = 0
        self._thread: threading.Thread | None = None

    async def update(self, data: bytes) -> None:
        if self._queue is None:
            self._hasher.update(data)
            self._fed += len(data)
            if self._fed >= BACKGROUND_AFTER:
                self._start()
            return
        self._batch.append(data)
        self._batched += len(data)
        if self._batched < BATCH:
            return
        batch, self._batch, self._batched = self._batch, [], 0
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            await trio.to_thread.run_sync(self._queue.put, batch)

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self._thread = threading.Thread(target=self._consume, name="fusestore-hash", daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        assert self._queue is not None
        reported = self._fed
        while (batch := self._queue.get()) is not None:
            for data in batch:
                self._hasher.update(data)
                self._fed += len(data)
            if self._on_progress is not None and self._fed - reported >= PROGRESS_STEP:
                self._on_progress(self._fed)
                reported = self._fed

    def _stop(self) -> None:
        if self._queue is not None and self._thread is not None:
            if self._batch:
                self._queue.put(self._batch)
                self._batch, self._batched = [], 0
            self._queue.put(None)
            self._thread.join()
            self._queue = self._thread = None

    def digest(self) -> bytes:
        self._stop()
        return self._hasher.digest()

    def abandon(self) -> None:
        """Writes went out of order: the running hash is useless (the commit re-hashes the file).

        Stopping waits for at most ``QUEUE_BATCHES`` queued batches: a few milliseconds.
        """
        self._stop()
