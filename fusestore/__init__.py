"""fusestore: a deduplicating store and FUSE filesystem.

``Store`` is the managed storage (see ``fusestore.store``); ``errors`` holds
the typed errors it raises.
"""

from . import errors
from .requests import RequestResponse
from .store import Store

__all__ = ["Store", "RequestResponse", "errors"]
