"""fusestore: a deduplicating store and FUSE filesystem.

The layers, bottom up; each package imports only those below it (checked by
``tests/test_layers.py``):

- ``errors``, ``digests``, ``linux``, ``private``: shared by every layer, import nothing of ours
  but each other (``private``: the modes that keep a store's files from other uids).
- ``client``: the ``/.requests`` wire format and ``fusestore link``; no LMDB, pyfuse3 or trio.
- ``pool``: staging files and the blob store (bytes and digests).
- ``catalog``: the LMDB records; one write transaction is one consistent change.
- ``store``: the plain synchronous library (``Store``) over pool and catalog; no pyfuse3 or trio.
- ``fs``: the pyfuse3 and trio adapter over the store (may use ``client.wire``).
- ``cli``: the ``fusestore`` command, one module per command.

``from fusestore import Store`` loads the store layer only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import RequestResponse, Store

__all__ = ["RequestResponse", "Store", "errors"]


def __getattr__(name: str) -> Any:
    if name in ("Store", "RequestResponse"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'fusestore' has no attribute {name!r}")
