"""A mount daemon whose pack store fails on cue: ``python -m tests.failing_daemon STORE MOUNTPOINT LOG CUES``.

The real daemon (``fs.daemon.serve``) over a ``FailingPackStore``: while a
file ``CUES/<op>`` exists, every call of that pack-store operation (create,
append, end, seal, read, delete, packs, barrier) raises a RuntimeError, an
exception no layer expects, or, if the file holds an errno name such as
``ENOSPC``, the OSError a real disk would give. Every chunk goes to a pack of its own (a
``PACK_TARGET`` of one byte), so that a file's chunk is soon in a sealed
pack and an unlink frees one. It prints ``ok`` on stdout once the mount answers.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from pathlib import Path

from fusestore.fs import daemon
from fusestore.pool import FailingPackStore, LocalPackStore
from fusestore.pool.failing import OPERATIONS
from fusestore.store import chunks


def fail_while_cued(cues: Path, op: str) -> None:
    try:
        name = (cues / op).read_text().strip()
    except FileNotFoundError:
        return
    if name:
        code = getattr(errno, name)
        raise OSError(code, f"{os.strerror(code)} (injected in the pack store's {op})")
    raise RuntimeError(f"injected fault in the pack store's {op}")


def main() -> None:
    store, mountpoint, log, cues = (Path(arg) for arg in sys.argv[1:5])
    logging.basicConfig(level=logging.INFO, filename=log, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chunks.PACK_TARGET = 1
    packs = FailingPackStore(LocalPackStore(store / "packs"))
    for op in OPERATIONS:
        packs.on(op, lambda op=op: fail_while_cued(cues, op), always=True)
    daemon.serve(store, mountpoint, packs=packs, ready_fd=sys.stdout.fileno())


if __name__ == "__main__":
    main()
