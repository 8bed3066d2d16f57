"""A writer's anchors of its catalog: the pin, the anchors made in the background, and work that waits for one.

To anchor (``anchor`` has the file and the rollback): under the writer
lock, a read transaction is begun (the *pin*) and the data file's meta
pages are read, so that both belong to the last commit; outside it, the
data file is synced and the anchor written. The previous pin goes only
once the new anchor is durable. Any committed snapshot may be anchored: a
transaction that names a blob not yet durable lists it in ``unsynced``
(see ``store.checkpoints``).

While a pin lives, LMDB reuses no page freed after its snapshot, so the
data file grows with every commit (about 11 pages each here) until the
next anchor: besides the checkpoints, a thread anchors after every
``ANCHOR_EVERY`` commits, and a writer that finds it ``ANCHOR_BEHIND``
commits behind anchors itself. Work that needs its commits durable (the
deletion of a blob they freed) waits for an anchor with ``when_durable``
instead of making one: one anchor serves every deletion waiting for it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import lmdb

from .anchor import AnchorFile, meta_txnids

ANCHOR_EVERY = 256
ANCHOR_BEHIND = 4 * ANCHOR_EVERY

log = logging.getLogger(__name__)


def meta_pages(env: lmdb.Environment, path: Path) -> bytes:
    """The first two pages of the data file in ``path`` (LMDB's meta pages), as the kernel has them now."""
    fd = os.open(path / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, 2 * int(env.stat()["psize"]), 0)
    finally:
        os.close(fd)


class Anchoring:
    """The anchors of one writable catalog, from its open (the first anchor) to ``close``.

    ``boot`` is what the anchors name, and ``closing_counts`` whether the
    last one may say the catalog was closed: after a power loss, until
    recovery has run, they keep naming the boot that went down and no close
    counts, so that a crash or a close before recovery leaves the next open
    to do it (``Catalog.recovered``).
    """

    def __init__(self, env: lmdb.Environment, path: Path, write_lock: threading.Lock, *, boot: bytes,
                 closing_counts: bool) -> None:
        self.env, self.path, self._write_lock = env, path, write_lock
        self.boot, self.closing_counts = boot, closing_counts
        self._file = AnchorFile(path / "anchor")
        self._lock = threading.Lock()
        self._pin: lmdb.Transaction | None = None
        self._anchored = -1  # the transaction the last anchor names
        self._since = 0  # commits since the last pin
        self._waiting: list[tuple[int, Callable[[], None]]] = []  # (transaction, what waits for its anchor)
        self._waiting_lock = threading.Lock()
        self._running = threading.Lock()  # held while waiting work runs: an anchor returns after it
        self._wanted = threading.Event()
        self._closing = False
        self.anchor()  # before any change: from here on the pin protects the snapshot
        self._thread = threading.Thread(target=self._anchor_when_asked, name="fusestore-anchor", daemon=True)
        self._thread.start()

    def committed(self) -> bool:
        """One more commit (called under the writer lock); True when the writer must anchor before going on."""
        self._since += 1
        if self._since >= ANCHOR_EVERY:
            self._wanted.set()
        return self._since >= ANCHOR_BEHIND

    def soon(self) -> None:
        """Anchor soon, on the anchoring thread (a big commit: its old pages are reusable only after an anchor)."""
        self._wanted.set()

    def when_durable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the anchoring thread, soon) once an anchor covers every commit so far."""
        with self._waiting_lock:
            self._waiting.append((int(self.env.info()["last_txnid"]), callback))
        self._wanted.set()

    def anchor(self, *, closed: bool = False, force: bool = False, run_waiting: bool = True) -> None:
        """Make every commit so far durable: the anchor a power loss goes back to (see the module docstring).

        A caller whose commits someone else anchored meanwhile does not
        anchor again, unless ``closed`` or ``force`` asks for it. Then the
        work waiting for those commits is done, by this caller or by the
        thread already at it, before this returns; a writer that may hold a
        lock such work takes passes ``run_waiting=False``.
        """
        wanted = int(self.env.info()["last_txnid"])
        with self._lock:
            if self._anchored < wanted or closed or force:
                self._anchor_now(closed)
        if run_waiting:
            self._run_waiting()

    def _anchor_now(self, closed: bool) -> None:
        with self._write_lock:
            self._since = 0
            pin = self.env.begin()
            metas = meta_pages(self.env, self.path)
        assert pin.id() in meta_txnids(metas), "the meta pages do not name the pinned snapshot"
        try:
            self.env.sync(True)
            self._file.write(pin.id(), metas, self.boot, closed=closed and self.closing_counts)
        except BaseException:
            pin.abort()
            raise
        previous, self._pin, self._anchored = self._pin, pin, pin.id()
        if previous is not None:
            previous.abort()

    def _run_waiting(self) -> None:
        with self._running:
            with self._waiting_lock:
                ready = [callback for txnid, callback in self._waiting if txnid <= self._anchored]
                self._waiting = [(txnid, callback) for txnid, callback in self._waiting if txnid > self._anchored]
            for callback in ready:
                try:
                    callback()
                except Exception:  # a deletion that fails leaves its blob to recovery (it stays listed as freed)
                    log.exception("work waiting for an anchor of the catalog at %s failed", self.path)

    def _anchor_when_asked(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            try:
                self.anchor()
            except Exception:  # the next checkpoint's anchor raises it to a caller
                log.exception("a background anchor of the catalog at %s failed", self.path)

    def close(self) -> None:
        """The last anchor, which says the catalog was closed (when that counts), and the pin goes."""
        self._closing = True
        self._wanted.set()
        self._thread.join()
        self.anchor(closed=True)
        assert self._pin is not None
        self._pin.abort()
        self._file.close()
