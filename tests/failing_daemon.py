"""A mount daemon whose blob store fails on cue: ``python -m tests.failing_daemon STORE MOUNTPOINT LOG CUES``.

The real daemon (``fs.daemon.serve``) over a ``FailingBlobStore``: while a
file ``CUES/<op>`` exists, every call of that blob-store operation (put,
open, delete, contains, barrier) raises a RuntimeError, an exception no
layer expects. It prints ``ok`` on stdout once the mount answers.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from fusestore.fs import daemon
from fusestore.pool import FailingBlobStore, LocalBlobStore
from fusestore.pool.failing import OPERATIONS


def fail_while_cued(cues: Path, op: str) -> None:
    if (cues / op).exists():
        raise RuntimeError(f"injected fault in the blob store's {op}")


def main() -> None:
    store, mountpoint, log, cues = (Path(arg) for arg in sys.argv[1:5])
    logging.basicConfig(level=logging.INFO, filename=log, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    blobs = FailingBlobStore(LocalBlobStore(store / "pool"))
    for op in OPERATIONS:
        blobs.on(op, lambda op=op: fail_while_cued(cues, op), always=True)
    daemon.serve(store, mountpoint, blobs=blobs, ready_fd=sys.stdout.fileno())


if __name__ == "__main__":
    main()
