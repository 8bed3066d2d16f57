"""The pool layer: the local staging area, the blob store behind a narrow protocol, and chunks in packs.

Bytes and digests only: the pool knows nothing of refcounts or names; the
store decides when a blob or a chunk is stored or deleted. For chunked
content it gives the pieces: ``chunker`` finds content-defined boundaries,
``codec`` stores a chunk raw or compressed, ``packs`` keeps stored chunks
back to back in pack files.
"""

from .blobstore import BlobMissing, BlobReader, BlobStore, NoBlobs, Promises
from .chunker import DEFAULT_PARAMS, ChunkParams, StreamChunker, chunks
from .codec import DEFAULT_COMPRESSION, RAW, ZSTD, Compression, DamagedChunk, decode, encode
from .failing import FailingPackStore
from .local import LocalBlobStore
from .memory_staging import memory_root
from .packs import LocalPackStore, PackMissing, PackSealed, PackStore
from .staging import ShortRead, StagingArea, StagingFile, staging_names

__all__ = ["BlobMissing", "BlobReader", "BlobStore", "ChunkParams", "Compression", "DEFAULT_COMPRESSION",
           "DEFAULT_PARAMS", "DamagedChunk", "FailingPackStore", "LocalBlobStore", "LocalPackStore", "NoBlobs",
           "PackMissing", "PackSealed", "PackStore", "Promises", "RAW", "ShortRead", "StagingArea", "StagingFile",
           "StreamChunker",
           "ZSTD", "chunks", "decode", "encode", "memory_root", "staging_names"]
