"""The daemon: serve a store on a mount point until unmounted or signalled.

``serve`` opens the store (which recovers what a killed daemon left),
mounts, reports readiness once the mount answers, serves, checkpoints every
``CHECKPOINT_SECONDS`` (and after each, compacts at most ``COMPACT_BYTES``
on a worker thread: ``store.compaction``), then commits what is still open
and closes the store. The command line checks the mount point and
/dev/fuse before.

Stopping never waits on a user: pyfuse3's main loop returns only once every
request in flight is answered, and a commit may hash a huge file for
minutes. So at SIGTERM/SIGINT, and once the mount is seen gone (an unmount
that the main loop has not yet noticed), long work gets ``STOP_GRACE``
seconds and then gives up (``store.stopping``): those calls fail with EIO,
and recovery at the next mount finishes their commits. (A long commit at a
release runs in the ``commits`` nursery: see ``Operations.release``.)
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pyfuse3
import trio

from ..pool import DEFAULT_COMPRESSION, Compression, PackStore
from ..store import Store
from ..store.content import DEFAULT_VERIFY_LIMIT
from ..store.tenancy import DEFAULT_TENANCY, Tenancy
from .operations import Operations

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 5.0
COMPACT_BYTES = 16 << 20  # stored bytes compaction copies after a checkpoint, at most: it never hogs the disk
STOP_GRACE = 5.0  # seconds that commits in flight keep once the daemon is asked to stop
UNMOUNT_POLL = 1.0  # seconds between two looks at whether the mount is still there


class MountFailed(Exception):
    """The kernel refused the mount (the message says why)."""


def serve(
    store_path: Path, mountpoint: Path, *, allow_other: bool = False, request_ttl: float = 60.0,
    tenancy: Tenancy = DEFAULT_TENANCY, verify_limit: int = DEFAULT_VERIFY_LIMIT, max_file_size: int | None = None,
    ready_fd: int | None = None, packs: PackStore | None = None, compression: Compression | None = None,
) -> None:
    """Run the daemon in this process until it is unmounted or signalled (``packs``, ``compression``: Store.open's)."""
    store = Store.open(store_path, request_ttl=request_ttl, verify_limit=verify_limit, tenancy=tenancy,
                       max_file_size=max_file_size, packs=packs,
                       compression=compression or DEFAULT_COMPRESSION)
    try:
        operations = Operations(store)
        options = set(pyfuse3.default_options) | {"fsname=fusestore", "subtype=fusestore", "default_permissions"}
        if allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(operations, str(mountpoint), options)
        except RuntimeError as exc:
            raise MountFailed(f"could not mount {mountpoint}: {exc}") from None
        log.info("mounted %s on %s (pid %d)", store_path, mountpoint, os.getpid())
        unmount = True
        try:
            unmount = trio.run(_serve, operations, mountpoint, ready_fd)
        finally:
            pyfuse3.close(unmount=unmount)
            log.info("unmounted %s", mountpoint)
    finally:
        store.close()


async def _serve(operations: Operations, mountpoint: Path, ready_fd: int | None) -> bool:
    """Serve requests; True when a signal ended it (so we still have to unmount)."""
    signalled = False
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            nonlocal signalled
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("signal %d: unmounting", signum)
                    signalled = True
                    operations.store.stopping.stop_after(STOP_GRACE)
                    pyfuse3.terminate()
                    return

        async def checkpoint() -> None:
            """Make committed changes durable every few seconds (as ext4's commit interval), then compact a little."""
            while True:
                await trio.sleep(CHECKPOINT_SECONDS)
                try:
                    await trio.to_thread.run_sync(operations.store.sync)
                except Exception:  # EIO, a full disk...: the mount must live on; say so and try again
                    log.exception("checkpoint failed, retrying in %d s", CHECKPOINT_SECONDS)
                    continue
                try:
                    await trio.to_thread.run_sync(operations.store.compact, COMPACT_BYTES)
                except Exception:
                    log.exception("compaction failed, retrying after the next checkpoint")

        async def announce_ready() -> None:
            """Say the mount answers, then watch for its unmount (which may leave long requests in flight)."""
            device = (await trio.to_thread.run_sync(os.stat, mountpoint)).st_dev
            if ready_fd is not None:
                os.write(ready_fd, b"ok\n")
                os.close(ready_fd)
            while (await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)).st_dev == device:
                await trio.sleep(UNMOUNT_POLL)
            log.info("%s was unmounted", mountpoint)
            operations.store.stopping.stop_after(STOP_GRACE)

        nursery.start_soon(watch_signals)
        nursery.start_soon(checkpoint)
        nursery.start_soon(announce_ready)
        async with trio.open_nursery() as commits:  # never cancelled: a commit gives up only at a stop
            operations.background = commits
            await pyfuse3.main()
            operations.store.stopping.stop_after(STOP_GRACE)  # unmounted or signalled: commits in flight get that long
            nursery.cancel_scope.cancel()
        operations.background = None
    await operations.commit_all()
    return signalled
