"""The store layer: the plain synchronous library over the pool and the catalog (see ``store.store``).

``Store`` is loaded when asked for, so that light modules of this package
(names, the reserved xattr names) cost no LMDB to whoever imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..pool.codec import Compression
    from .access import RequestResponse
    from .store import Store

__all__ = ["Compression", "RequestResponse", "Store"]


def __getattr__(name: str) -> Any:
    if name == "Store":
        from .store import Store

        return Store
    if name == "Compression":  # what ``fusestore mount --compression`` parses
        from ..pool.codec import Compression

        return Compression
    if name == "RequestResponse":
        from .access import RequestResponse

        return RequestResponse
    raise AttributeError(f"module 'fusestore.store' has no attribute {name!r}")
