"""The running hash gives BLAKE3 whether it stays inline or moves to its worker thread."""

from __future__ import annotations

import os

import blake3
import pytest
import trio

from fusestore.fs.running_hash import BACKGROUND_AFTER, PROGRESS_STEP, RunningHash


@pytest.mark.parametrize("total", [0, 1, BACKGROUND_AFTER - 1, BACKGROUND_AFTER, 3 * BACKGROUND_AFTER + 12345])
def test_running_hash_equals_blake3(total: int) -> None:
    data = os.urandom(total)

    async def feed() -> bytes:
        running = RunningHash()
        for start in range(0, total, 1 << 20):
            await running.update(data[start:start + (1 << 20)])
        return await trio.to_thread.run_sync(running.digest)

    assert trio.run(feed) == blake3.blake3(data).digest()


def test_abandoned_hash_stops_its_thread() -> None:
    async def feed() -> RunningHash:
        running = RunningHash()
        for _ in range(3 * BACKGROUND_AFTER >> 20):
            await running.update(bytes(1 << 20))
        return running

    running = trio.run(feed)
    assert running._thread is not None and running._thread.is_alive()
    thread = running._thread
    running.abandon()
    assert not thread.is_alive()


def test_worker_thread_reports_progress_in_order() -> None:
    """Progress drives the writeback of staged bytes: it may only name bytes already fed."""
    total = BACKGROUND_AFTER + 3 * PROGRESS_STEP + 12345
    reports: list[int] = []

    async def feed() -> bytes:
        running = RunningHash(on_progress=reports.append)
        for start in range(0, total, 1 << 20):
            await running.update(bytes(min(1 << 20, total - start)))
        return await trio.to_thread.run_sync(running.digest)

    assert trio.run(feed) == blake3.blake3(bytes(total)).digest()
    assert len(reports) == 3
    assert reports == sorted(reports) and reports[-1] <= total
    assert all(b - a >= PROGRESS_STEP for a, b in zip([BACKGROUND_AFTER, *reports[:-1]], reports, strict=True))
