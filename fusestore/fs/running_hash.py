"""BLAKE3 of a file as it is written, and its chunks stored, off the event loop once the file grows large.

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

The same thread feeds a ``ChunkStream``, if given: the file's chunks are
cut, hashed and the new ones stored while the writes go on, so that the
commit of a large file has only their records left to write. It starts on
the bytes written before the thread did (read back from the staging file).
A stream that fails (a full disk at an append) is dropped: the commit then
stores the file's chunks itself, and reports what fails.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import blake3
import trio

from ..store.chunk_stream import ChunkStream

BACKGROUND_AFTER = 8 << 20  # bytes hashed inline before a worker thread takes over
BATCH = 4 << 20  # bytes handed to the worker thread at once
QUEUE_BATCHES = 4  # at most this many batches wait for the hasher
PROGRESS_STEP = 32 << 20
READ_BACK = 1 << 20  # bytes per read of what was written before the thread started

log = logging.getLogger(__name__)


class RunningHash:
    """The BLAKE3 of bytes fed in order; ``digest`` may block, so call it from a worker thread."""

    def __init__(self, on_progress: Callable[[int], None] | None = None, *,
                 stream: Callable[[], ChunkStream] | None = None,
                 read_back: Callable[[int, int], bytes] | None = None) -> None:
        """``on_progress(n)``, if given, is called on the worker thread once ``n`` bytes are hashed.

        ``stream`` makes the stream the worker thread feeds, from the first
        byte (``read_back(length, offset)`` reads what came before it).
        """
        self._on_progress = on_progress
        self._make_stream, self._read_back = stream, read_back
        self._stream: ChunkStream | None = None
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
        self._start_stream(self._fed)
        while (batch := self._queue.get()) is not None:
            for data in batch:
                self._hasher.update(data)
                self._fed += len(data)
                self._feed_stream(data)
            if self._on_progress is not None and self._fed - reported >= PROGRESS_STEP:
                self._on_progress(self._fed)
                reported = self._fed

    def _start_stream(self, written: int) -> None:
        if self._make_stream is None or self._read_back is None:
            return
        self._stream = self._make_stream()
        offset = 0
        while self._stream is not None and offset < written:
            data = self._read_back(min(READ_BACK, written - offset), offset)
            offset += len(data)
            self._feed_stream(data)

    def _feed_stream(self, data: bytes) -> None:
        if self._stream is None:
            return
        try:
            self._stream.feed(data)
        except Exception:
            log.warning("storing chunks as they are written failed; the commit stores them", exc_info=True)
            self._drop_stream()

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def streamed(self) -> ChunkStream | None:
        """After ``digest``: the finished stream of every byte hashed, or None (the commit stores the chunks).

        The caller closes it once the commit is done.
        """
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.finish()
            except Exception:
                log.warning("storing chunks as they are written failed; the commit stores them", exc_info=True)
                stream.close()
                return None
        return stream

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
        """Writes went out of order: the running hash and the stream are useless (the commit re-hashes the file).

        Stopping waits for at most ``QUEUE_BATCHES`` queued batches: a few
        milliseconds of hashing, and their chunks.
        """
        self._stop()
        self._drop_stream()
