"""The pool layer: the local staging area and the blob store behind a narrow protocol.

Bytes and digests only: the pool knows nothing of refcounts or names; the
store decides when a blob is stored or deleted.
"""

from .blobstore import BlobMissing, BlobReader, BlobStore, Promises
from .failing import FailingBlobStore
from .local import LocalBlobStore
from .staging import ShortRead, StagingArea, StagingFile

__all__ = ["BlobMissing", "BlobReader", "BlobStore", "FailingBlobStore", "LocalBlobStore", "Promises",
           "ShortRead", "StagingArea", "StagingFile"]
